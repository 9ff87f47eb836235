// TorrentGuard web UI: polls the daemon's API each second and renders every transfer.
// Hand-written, no build step. Every value from the API reaches the page through textContent,
// never as HTML: names and errors can come from remote peers.
'use strict';

const POLL_MS = 1000;
const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
const rows = new Map(); // "kind:id" -> row state
let signedOut = false;

// ---- API -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: 'same-origin' };
  if (method !== 'GET') init.headers['X-CSRF-Token'] = csrfToken;
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'The daemon cannot be reached (is it still running?).');
  }
  if (response.status === 401) showSignedOut();
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!response.ok) {
    const message = data && typeof data.error === 'string' ? data.error
      : data && data.error && data.error.message ? data.error.message
      : `The daemon answered ${response.status} ${response.statusText}.`;
    throw new ApiError(response.status, message);
  }
  return data;
}

function showSignedOut() {
  signedOut = true;
  showBanner('Signed out: open the login URL the daemon printed (or run `torrentguard ui`) to sign in again.');
}

function showBanner(message) {
  const banner = document.getElementById('connection-error');
  banner.textContent = message || '';
  banner.hidden = !message;
}

// ---- formatting ------------------------------------------------------------------------------

function formatBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = Number(n) || 0;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

function formatRate(bps) { return `${formatBytes(bps)}/s`; }

function formatEta(secs) {
  if (secs === null || secs === undefined) return '–';
  const s = Math.max(0, Math.round(secs));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function formatPercent(p) {
  const value = Math.max(0, Math.min(100, Number(p) || 0));
  return `${value === 100 ? '100' : value.toFixed(1)} %`;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// ---- stats -----------------------------------------------------------------------------------

function renderStats(s) {
  const set = (id, text) => { document.getElementById(id).textContent = text; };
  set('stat-download', s.download_limit ? `${formatRate(s.download_bps)} of ${formatRate(s.download_limit)}` : formatRate(s.download_bps));
  set('stat-upload', s.upload_limit ? `${formatRate(s.upload_bps)} of ${formatRate(s.upload_limit)}` : formatRate(s.upload_bps));
  set('stat-downloads', `${s.downloads_active} active, ${s.downloads_queued} queued`);
  set('stat-seeding', String(s.shares_seeding));
  set('stat-totals', `${formatBytes(s.uploaded_total)} / ${formatBytes(s.downloaded_total)}`);
  set('stat-fingerprint', s.fingerprint);
  set('stat-port', String(s.peer_port));
  set('stat-version', s.version);
}

// ---- transfers -------------------------------------------------------------------------------

function transferPath(t) { return `/api/${t.kind === 'share' ? 'shares' : 'downloads'}/${encodeURIComponent(t.id)}`; }

function field(label, key) {
  const value = el('dd', { 'data-field': key });
  return { node: el('div', {}, el('dt', { text: label }), value), value };
}

function createRow(t) {
  const name = el('h3', { class: 'transfer-name' });
  const kind = el('span', { class: 'badge kind', text: t.kind });
  const status = el('span', { class: 'badge status transfer-status' });
  const bar = el('progress', { class: 'transfer-bar', max: '100', value: '0' });
  const percent = el('span', { class: 'transfer-percent' });
  const fields = {
    speed: field('Speed', 'speed'), eta: field('ETA', 'eta'), peers: field('Peers', 'peers'),
    size: field('Size', 'size'), reused: field('Reused', 'reused'), fetched: field('Fetched', 'fetched'),
    uploaded: field('Uploaded', 'uploaded'),
  };
  const path = el('p', { class: 'transfer-path' });
  const code = el('input', { class: 'share-code', readonly: '', 'aria-label': 'Share code' });
  const codeBox = el('p', { class: 'share-code-box' }, code, copyButton(code));
  const error = el('p', { class: 'error transfer-error', role: 'alert' });
  const message = el('p', { class: 'error action-error', role: 'alert', hidden: '' });
  const pause = el('button', { type: 'button', class: 'action-pause', text: 'Pause' });
  const remove = el('button', { type: 'button', class: 'action-remove danger', text: 'Remove' });
  const actions = el('div', { class: 'actions' }, pause, remove);
  const node = el('article', { class: 'card transfer', 'data-transfer-id': t.id, 'data-kind': t.kind },
    el('div', { class: 'transfer-head' }, name, kind, status),
    el('div', { class: 'transfer-progress' }, bar, percent),
    el('dl', { class: 'transfer-fields' }, ...Object.values(fields).map(f => f.node)),
    path, codeBox, error, actions, message);
  const row = { node, name, status, bar, percent, fields, path, code, codeBox, error, message, pause, remove, t };
  pause.addEventListener('click', () => act(row, row.t.status === 'paused' ? 'resume' : 'pause'));
  remove.addEventListener('click', () => confirmRemove(row));
  if (t.kind === 'download') addPeersPanel(row, actions);
  return row;
}

function copyButton(input) {
  const button = el('button', { type: 'button', class: 'copy', text: 'Copy' });
  button.addEventListener('click', async () => {
    input.select();
    try { await navigator.clipboard.writeText(input.value); button.textContent = 'Copied'; } catch (e) { button.textContent = 'Select and copy'; }
  });
  return button;
}

function updateRow(row, t) {
  row.t = t;
  row.node.dataset.status = t.status;
  row.node.dataset.percent = String(t.percent);
  row.name.textContent = t.name;
  row.status.textContent = t.status;
  row.status.dataset.status = t.status;
  row.bar.value = Math.max(0, Math.min(100, Number(t.percent) || 0));
  row.percent.textContent = formatPercent(t.percent);
  const f = row.fields;
  f.speed.value.textContent = `↓ ${formatRate(t.download_bps)} · ↑ ${formatRate(t.upload_bps)}`;
  f.eta.value.textContent = t.status === 'downloading' ? formatEta(t.eta_secs) : '–';
  f.peers.value.textContent = String(t.peers);
  f.size.value.textContent = `${formatBytes(t.bytes_done)} of ${formatBytes(t.size)}`;
  f.reused.value.textContent = formatBytes(t.bytes_reused);
  f.fetched.value.textContent = formatBytes(t.bytes_fetched);
  f.uploaded.value.textContent = formatBytes(t.uploaded);
  f.reused.node.hidden = f.fetched.node.hidden = t.kind !== 'download';
  f.eta.node.hidden = t.kind !== 'download';
  row.path.textContent = t.path;
  row.codeBox.hidden = !t.share_code;
  if (t.share_code && row.code.value !== t.share_code) row.code.value = t.share_code;
  row.error.textContent = t.error || '';
  row.error.hidden = !t.error;
  row.pause.textContent = t.status === 'paused' ? 'Resume' : 'Pause';
  row.pause.className = t.status === 'paused' ? 'action-resume' : 'action-pause';
  row.pause.disabled = t.status === 'completed' || t.status === 'failed';
  if (row.peers && !row.peers.panel.hidden) refreshPeers(row);
}

async function act(row, verb) {
  showRowMessage(row, '');
  try {
    await api('POST', `${transferPath(row.t)}/${verb}`);
    await refresh();
  } catch (e) { showRowMessage(row, e.message); }
}

function confirmRemove(row) {
  if (!row.remove.dataset.armed) {
    row.remove.dataset.armed = '1';
    row.remove.textContent = row.t.kind === 'share' ? 'Stop sharing? (file stays)' : 'Remove? (partial file stays)';
    setTimeout(() => { delete row.remove.dataset.armed; row.remove.textContent = 'Remove'; }, 4000);
    return;
  }
  delete row.remove.dataset.armed;
  api('DELETE', transferPath(row.t)).then(refresh, e => showRowMessage(row, e.message));
}

function showRowMessage(row, message) {
  row.message.textContent = message;
  row.message.hidden = !message;
}

// ---- peers -----------------------------------------------------------------------------------

function addPeersPanel(row, actions) {
  const toggle = el('button', { type: 'button', class: 'action-peers', text: 'Peers', 'aria-expanded': 'false' });
  const body = el('tbody');
  const table = el('table', { class: 'peers-table' },
    el('thead', {}, el('tr', {}, ...['Peer', 'Address', 'Rate', 'State', 'Received', 'Failed chunks', 'Bans', 'Last error']
      .map(h => el('th', { scope: 'col', text: h })))), body);
  const empty = el('p', { class: 'hint', text: 'No peers yet.' });
  const panel = el('div', { class: 'peers-panel', hidden: '' }, el('div', { class: 'table-scroll' }, table), empty);
  actions.prepend(toggle);
  row.node.append(panel);
  row.peers = { panel, body, empty };
  toggle.addEventListener('click', () => {
    panel.hidden = !panel.hidden;
    toggle.setAttribute('aria-expanded', String(!panel.hidden));
    if (!panel.hidden) refreshPeers(row);
  });
}

async function refreshPeers(row) {
  let peers;
  try {
    peers = await api('GET', `${transferPath(row.t)}/peers`);
  } catch (e) { showRowMessage(row, e.message); return; }
  const { body, empty } = row.peers;
  body.replaceChildren(...peers.map(p => el('tr', { 'data-peer': p.fingerprint, 'data-state': p.state },
    el('td', { class: 'fingerprint', text: p.fingerprint, title: p.fingerprint }),
    el('td', { text: p.address || '–' }),
    el('td', { text: formatRate(p.download_bps) }),
    el('td', { text: p.state }),
    el('td', { text: formatBytes(p.reputation.bytes_received) }),
    el('td', { text: String(p.reputation.chunks_failed) }),
    el('td', { text: String(p.reputation.bans) }),
    el('td', { text: p.reputation.last_error || '–' }))));
  empty.hidden = peers.length > 0;
}

function renderTransfers(list) {
  const container = document.getElementById('transfers');
  const seen = new Set();
  for (const t of list) {
    const key = `${t.kind}:${t.id}`;
    seen.add(key);
    let row = rows.get(key);
    if (!row) { row = createRow(t); rows.set(key, row); }
    updateRow(row, t);
    container.append(row.node); // keeps the API's order (newest first) without rebuilding rows
  }
  for (const [key, row] of rows) {
    if (!seen.has(key)) { row.node.remove(); rows.delete(key); }
  }
  document.getElementById('transfers-empty').hidden = list.length > 0;
}

// ---- forms -----------------------------------------------------------------------------------

function wireForm(formId, errorId, toBody) {
  const form = document.getElementById(formId);
  const error = document.getElementById(errorId);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const button = form.querySelector('button[type="submit"]');
    error.hidden = true;
    button.disabled = true;
    try {
      await api('POST', form.dataset.endpoint, toBody(form));
      form.reset();
      await refresh();
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    } finally { button.disabled = false; }
  });
}

// ---- loop ------------------------------------------------------------------------------------

async function refresh() {
  if (signedOut) return;
  try {
    const [stats, transfers] = await Promise.all([api('GET', '/api/stats'), api('GET', '/api/transfers')]);
    renderStats(stats);
    renderTransfers(transfers);
    if (!signedOut) showBanner('');
  } catch (e) {
    if (!signedOut) showBanner(e.message);
  }
}

async function poll() {
  await refresh();
  if (!signedOut) setTimeout(poll, POLL_MS);
}

document.getElementById('add-download-form').dataset.endpoint = '/api/downloads';
document.getElementById('share-form').dataset.endpoint = '/api/shares';
wireForm('add-download-form', 'add-download-error', (form) => {
  const body = { code: form.elements.code.value.trim() };
  const outDir = form.elements.out_dir.value.trim();
  if (outDir) body.out_dir = outDir;
  return body;
});
wireForm('share-form', 'share-error', (form) => ({ path: form.elements.path.value.trim() }));
document.getElementById('logout').addEventListener('click', async () => {
  try { await api('POST', '/logout'); } catch (e) { /* signed out either way */ }
  showSignedOut();
});
poll();
