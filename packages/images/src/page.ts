import { createHash } from 'node:crypto';

// The browser upload page. The ticket comes in the URL fragment (#ticket=...), which browsers never send to a server
// or put in logs. Data requests use paths relative to the page, so the page works under any mount prefix.
const SCRIPT = String.raw`
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
const CHUNK = Number(params.get('chunk')) || 8 * 1024 * 1024;
$('ticket').value = params.get('ticket') || '';
let file, size = 0, offset = 0, paused = false, controller, running = false;

const base = () => 'images/' + encodeURIComponent($('ticket').value.trim());
const say = (text) => { $('status').textContent = text; };
const buttons = (s) => { for (const [k, v] of Object.entries(s)) $(k).disabled = !v; };
function show() {
  $('bar').max = size || 1; $('bar').value = offset;
  $('pct').textContent = (size ? Math.floor(offset * 100 / size) : 100) + '% (' + offset + ' of ' + size + ' bytes)';
}
async function call(path, init) {
  const r = await fetch(base() + path, init);
  const body = r.headers.get('content-type')?.includes('json') ? await r.json() : {};
  if (!r.ok) throw new Error(body.error || ('HTTP ' + r.status));
  return body;
}
async function sha256(blob) {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer()));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}
/** Asks the server where to continue; a resumed upload must be the same file (sha256 of the last chunk sent). */
async function whereToContinue() {
  const info = await call('/info');
  if (info.size !== file.size) throw new Error('the file has ' + file.size + ' bytes; this ticket expects ' + info.size);
  size = info.size;
  const at = info.upload.resumeOffset;
  if (at === 0) return 0;
  const from = Math.max(0, at - CHUNK);
  const [local, remote] = await Promise.all([sha256(file.slice(from, at)), call('/checksum?offset=' + from + '&length=' + (at - from))]);
  if (local !== remote.sha256) { say('This is not the file uploaded before; starting over.'); return 0; }
  say('Continuing at byte ' + at + ' (same file confirmed).');
  return at;
}
async function loop() {
  running = true;
  buttons({ start: false, pause: true, resume: false, cancel: true });
  try {
    while (offset < size && !paused) {
      const end = Math.min(offset + CHUNK, size);
      controller = new AbortController();
      await call('', { method: 'PUT', body: file.slice(offset, end), signal: controller.signal,
        headers: { 'content-type': 'application/octet-stream', 'content-range': 'bytes ' + offset + '-' + (end - 1) + '/' + size } });
      offset = end;
      show();
    }
    if (!paused) {
      const st = await call('', { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ op: 'finalize' }) });
      say('Upload complete: ' + st.check.format + (st.check.content ? ' (' + st.check.content + ')' : '') + ', ' + st.size + ' bytes.');
      buttons({ start: false, pause: false, resume: false, cancel: false });
    }
  } catch (err) {
    if (paused) return;
    say('Upload stopped: ' + err.message);
    buttons({ start: true, pause: false, resume: true, cancel: true });
  } finally {
    running = false;
  }
}
$('start').onclick = async () => {
  file = $('file').files[0];
  if (!file) return say('Choose a file first.');
  paused = false;
  try { offset = await whereToContinue(); } catch (err) { return say('Cannot upload: ' + err.message); }
  show();
  loop();
};
$('pause').onclick = () => {
  paused = true; controller?.abort();
  say('Paused at byte ' + offset + '.');
  buttons({ start: false, pause: false, resume: true, cancel: true });
};
$('resume').onclick = async () => {
  paused = false;
  try { offset = await whereToContinue(); } catch (err) { return say('Cannot resume: ' + err.message); }
  show();
  loop();
};
$('cancel').onclick = async () => {
  paused = true; controller?.abort();
  try { await call('', { method: 'DELETE' }); say('Upload cancelled; the partial image was discarded.'); }
  catch (err) { say('Cancel failed: ' + err.message); }
  buttons({ start: false, pause: false, resume: false, cancel: false });
};
`;

export const UPLOAD_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Porthole image upload</title>
<style>body{font:15px system-ui,sans-serif;margin:2em;max-width:44em}progress{width:100%;height:1.4em}button{margin-right:.5em}
#status{min-height:1.5em;font-weight:600}input[type=text]{width:100%}</style></head>
<body><h1>Upload a disk image or ISO</h1>
<p><label>Ticket <input type="text" id="ticket" autocomplete="off"></label></p>
<p><input type="file" id="file"></p>
<p><button id="start">Upload</button><button id="pause" disabled>Pause</button><button id="resume" disabled>Resume</button><button id="cancel" disabled>Cancel</button></p>
<p><progress id="bar" max="1" value="0"></progress><br><span id="pct">0%</span></p>
<p id="status" role="status"></p>
<script>${SCRIPT}</script></body></html>
`;

/** Only the page's own inline script may run; it may talk only to this server. */
export const UPLOAD_PAGE_CSP = `default-src 'none'; script-src 'sha256-${createHash('sha256').update(SCRIPT).digest('base64')}'; style-src 'unsafe-inline'; connect-src 'self'`;
