// Keeps the dashboard live: the server pushes re-rendered (already escaped) fragments as
// server-sent events, keyed by the id of the element each replaces. No page reloads.
'use strict';

(() => {
  const main = document.querySelector('main[data-events]');
  const status = document.getElementById('live-status');
  if (!main || !window.EventSource) return;

  const show = (state, text) => {
    status.dataset.state = state;
    status.textContent = text;
  };

  const source = new EventSource(main.dataset.events);
  source.addEventListener('snapshot', (event) => {
    const fragments = JSON.parse(event.data);
    for (const [id, html] of Object.entries(fragments)) {
      const element = document.getElementById(id);
      if (element) element.innerHTML = html;
    }
    show('live', `live · updated ${new Date().toLocaleTimeString()}`);
  });
  source.addEventListener('problem', (event) => show('problem', event.data));
  source.addEventListener('error', () => show('down', 'reconnecting…'));
})();
