// Drives the TorrentGuard web UI in Debian's Chromium: signs in through the one-time login URL,
// pastes a share code into the add-download form, waits (polling the DOM under a deadline) for
// the new download to reach 100 % and finish ("seeding", or "completed" once its seed policy is
// met), and saves a screenshot.
//
// Environment:
//   TG_UI_LOGIN_URL   the login URL the daemon printed (required)
//   TG_SHARE_CODE     the share code to paste (required)
//   TG_OUT_DIR        folder to save into (optional; else the daemon's download folder)
//   TG_SCREENSHOT     where to save a PNG of the page once complete (optional)
//   TG_DEADLINE_MS    how long the download may take (default 60000)
//   TG_CHROMIUM       the browser (default /usr/bin/chromium)
// Prints one JSON line {"event":"ui_completed",…} on success; exits 1 with the reason otherwise.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};

// The flags that keep Chromium quiet on a closed network, as root, without a GPU.
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

async function run() {
  const loginUrl = env('TG_UI_LOGIN_URL');
  const code = env('TG_SHARE_CODE');
  const outDir = process.env.TG_OUT_DIR;
  const screenshot = process.env.TG_SCREENSHOT;
  const deadline = Number(env('TG_DEADLINE_MS', '60000'));
  const origin = new URL(loginUrl).origin;
  const userDataDir = mkdtempSync(join(tmpdir(), 'tg-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: env('TG_CHROMIUM', '/usr/bin/chromium'),
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1100, height: 760 },
  });
  try {
    const page = context.pages()[0] ?? await context.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });

    await page.goto(loginUrl, { timeout: deadline });
    if (page.url() !== `${origin}/`) {
      throw new Error(`signing in did not land on ${origin}/ but on ${page.url()}: ${await page.textContent('body')}`);
    }
    await page.waitForSelector('#add-download-form', { timeout: deadline });
    await page.fill('#share-code', code);
    if (outDir) await page.fill('#out-dir', outDir);
    await page.click('#add-download-submit');

    // Resolves with the finished row, or with the first error the page shows.
    const handle = await page.waitForFunction(() => {
      const formError = document.getElementById('add-download-error');
      if (!formError.hidden) return { error: `the add form says: ${formError.textContent}` };
      const row = document.querySelector('article.transfer[data-kind="download"]');
      if (!row) return null;
      if (row.dataset.status === 'failed') {
        return { error: `the download failed: ${row.querySelector('.transfer-error').textContent}` };
      }
      if (!['seeding', 'completed'].includes(row.dataset.status)) return null;
      return {
        id: row.dataset.transferId,
        status: row.dataset.status,
        name: row.querySelector('.transfer-name').textContent,
        percent: row.querySelector('.transfer-percent').textContent,
        bar: row.querySelector('.transfer-bar').value,
        path: row.querySelector('.transfer-path').textContent,
      };
    }, null, { timeout: deadline, polling: 200 });
    const row = await handle.jsonValue();
    if (row.error) throw new Error(row.error);
    if (row.percent !== '100 %' || row.bar !== 100) {
      throw new Error(`completed, but the row shows ${row.percent} (bar ${row.bar})`);
    }
    if (problems.length) throw new Error(problems.join('\n'));
    if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
    console.log(JSON.stringify({ event: 'ui_completed', ...row }));
  } finally {
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

run().catch((e) => {
  console.error(`ui.mjs: ${e.stack || e}`);
  process.exit(1);
});
