// Drives the tracker's dashboard in Debian's Chromium: loads `/`, tells the test it is loaded
// (the test then shares a file), waits for the file to appear with its seeder through the
// page's live updates (no reload), saves a screenshot, follows the file's link to its peers
// and checks the seeder is listed there too. Any console error (a Content-Security-Policy
// violation among them) or page error fails the run.
//
// Environment:
//   TG_TRACKER_URL   the tracker's https:// base URL (required; its certificate is self-signed)
//   TG_FILE_ID       the id of the file the test will share (required)
//   TG_FILE_NAME     its name, exactly as it must be shown (required)
//   TG_SEEDER_FP     the seeder's certificate fingerprint (required)
//   TG_SCREENSHOT    where to save a PNG of the overview once the file shows (optional)
//   TG_DEADLINE_MS   how long each wait may take (default 60000)
//   TG_CHROMIUM      the browser (default /usr/bin/chromium)
// Prints {"event":"dashboard_loaded"} once the page is up, then {"event":"dashboard_done",…};
// exits 1 with the reason otherwise.

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
  const base = env('TG_TRACKER_URL');
  const fileId = env('TG_FILE_ID');
  const fileName = env('TG_FILE_NAME');
  const seeder = env('TG_SEEDER_FP');
  const screenshot = process.env.TG_SCREENSHOT;
  const deadline = Number(env('TG_DEADLINE_MS', '60000'));
  const browser = await chromium.launch({
    executablePath: env('TG_CHROMIUM', '/usr/bin/chromium'),
    headless: true,
    args: CHROMIUM_ARGS,
  });
  try {
    // The tracker's certificate is self-signed (agents pin its fingerprint instead).
    const context = await browser.newContext({
      ignoreHTTPSErrors: true,
      viewport: { width: 1200, height: 720 },
    });
    const page = await context.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });

    const response = await page.goto(`${base}/`, { timeout: deadline });
    if (response.status() !== 200) throw new Error(`GET / answered ${response.status()}`);
    await page.waitForSelector('#live-status[data-state="live"]', { timeout: deadline });
    if (await page.$(`tr[data-file-id="${fileId}"]`)) {
      throw new Error('the file is listed before the test shared it');
    }
    // Survives only if the page is never reloaded.
    await page.evaluate(() => { window.tgNotReloaded = true; });
    console.log(JSON.stringify({ event: 'dashboard_loaded' }));

    const row = `tr[data-file-id="${fileId}"]`;
    const handle = await page.waitForFunction((selector) => {
      const tr = document.querySelector(selector);
      if (!tr || tr.querySelector('.seeders').textContent !== '1') return null;
      return {
        notReloaded: window.tgNotReloaded === true,
        name: tr.querySelector('.name').textContent,
        seeders: tr.querySelector('.seeders').textContent,
        leechers: tr.querySelector('.leechers').textContent,
        completion: tr.querySelector('.completion .pct').textContent,
      };
    }, row, { timeout: deadline, polling: 100 });
    const shown = await handle.jsonValue();
    if (!shown.notReloaded) throw new Error('the page was reloaded to show the file');
    if (shown.name !== fileName) throw new Error(`the file is shown as ${JSON.stringify(shown.name)}`);
    const peerRow = `#peers-body tr[data-fingerprint="${seeder}"]`;
    await page.waitForSelector(peerRow, { timeout: deadline });
    const reputation = await page.textContent(`${peerRow} .reputation`);
    if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });

    await Promise.all([
      page.waitForURL(`${base}/dashboard/files/${fileId}`, { timeout: deadline }),
      page.click(`${row} .name a`),
    ]);
    const seederRow = `#file-peers-body tr[data-fingerprint="${seeder}"]`;
    await page.waitForSelector(seederRow, { timeout: deadline });
    const role = await page.textContent(`${seederRow} .role`);
    if (role !== 'seeder') throw new Error(`the seeder's role is shown as ${role}`);
    const title = await page.textContent('.file-title');
    if (title !== fileName) throw new Error(`the file page is titled ${JSON.stringify(title)}`);
    // The file page goes live too.
    await page.waitForSelector('#live-status[data-state="live"]', { timeout: deadline });
    if (problems.length) throw new Error(problems.join('\n'));
    console.log(JSON.stringify({
      event: 'dashboard_done', ...shown, reputation, role, address: await page.textContent(`${seederRow} .address`),
    }));
  } finally {
    await browser.close();
  }
}

run().catch((e) => {
  console.error(`dashboard.mjs: ${e.stack || e}`);
  process.exit(1);
});
