import { createHash } from 'node:crypto';

// The browser upload page. The ticket comes in the URL fragment (#ticket=...), which browsers never send to a server
// or put in logs. Data requests use paths relative to the page, so the page works under any mount prefix. It follows
// imageio's flow (OPTIONS, PUT ?flush=n, a final flush) and uses Porthole's finalize where the server offers it.
const SCRIPT = String.raw`
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
const CHUNK = Number(params.get('chunk')) || 8 * 1024 * 1024;
$('ticket').value = params.get('ticket') || '';
let file, size = 0, offset = 0, paused = false, controller, info, features = [], dead = false, keeper, since, sinceOffset;

const base = () => 'images/' + encodeURIComponent($('ticket').value.trim());
const say = (text) => { $('status').textContent = text; };
const buttons = (s) => { for (const k of ['start', 'pause', 'resume', 'cancel']) $(k).disabled = dead || !s[k]; };
const mib = (n) => (n / 1048576).toFixed(n < 10485760 ? 1 : 0) + ' MiB';
const clock = (s) => Math.floor(s / 60) + ':' + String(Math.floor(s % 60)).padStart(2, '0');
function show() {
  $('bar').max = size || 1; $('bar').value = offset;
  $('pct').textContent = (size ? Math.floor(offset * 100 / size) : 100) + '% (' + offset + ' of ' + size + ' bytes)';
  const secs = (performance.now() - since) / 1000, moved = offset - sinceOffset;
  if (moved > 0 && secs > 0) {
    const rate = moved / secs;
    $('speed').textContent = mib(rate) + '/s, ' + clock((size - offset) / rate) + ' left';
  }
}
async function call(path, init) {
  const r = await fetch(base() + path, init);
  const body = r.headers.get('content-type')?.includes('json') ? await r.json() : {};
  if (!r.ok) { const e = new Error(body.error || ('HTTP ' + r.status)); e.status = r.status; throw e; }
  return body;
}
/** Refusals after which this ticket cannot be used again: expired, deleted, unknown, refused by the format check. */
const final = (err) => err.status === 403 || err.status === 422 || (err.status === 409 && /refused/.test(err.message));
function end(text) {
  dead = true; paused = true; controller?.abort(); clearInterval(keeper);
  say(text); buttons({}); $('file').disabled = true; $('ticket').disabled = true;
}
function fail(what, err) {
  if (final(err)) end(what + err.message + '. This ticket cannot be used any more.');
  else { say(what + err.message); buttons({ start: true, resume: offset > 0, cancel: features.includes('cancel') }); }
}
/** Names the target disk and keeps the ticket alive while the page is open (each info request renews it). */
async function attach() {
  try {
    info = await call('/info');
    features = (await call('', { method: 'OPTIONS' })).features || [];
  } catch (err) { return fail('Cannot use this ticket: ', err); }
  $('target').textContent = 'Target disk: ' + info.target + ' (' + mib(info.size) + ', ' + info.size + ' bytes)';
  size = info.size;
  clearInterval(keeper);
  const every = Number(params.get('keepalive')) || Math.min(60000, Math.max(1000, info.timeout * 1000 / 3));
  keeper = setInterval(() => call('/info').catch((err) => { if (final(err)) end('The ticket ended: ' + err.message + '.'); }), every);
  buttons({ start: true });
}
async function sha256(blob) {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer()));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}
/** Asks the server where to continue; a resumed upload must be the same file (sha256 of the last chunk sent). */
async function whereToContinue() {
  info = await call('/info');
  if (info.size !== file.size) throw new Error('the file has ' + file.size + ' bytes; ' + info.target + ' takes ' + info.size);
  size = info.size;
  const at = info.upload.resumeOffset;
  if (at === 0) return 0;
  const from = Math.max(0, at - CHUNK);
  const [local, remote] = await Promise.all([sha256(file.slice(from, at)), call('/checksum?algorithm=sha256&offset=' + from + '&length=' + (at - from))]);
  if (local !== remote.checksum) { say('This is not the file uploaded before; starting over.'); return 0; }
  say('Continuing at byte ' + at + ' (same file confirmed).');
  return at;
}
async function loop() {
  buttons({ pause: true, cancel: features.includes('cancel') });
  since = performance.now(); sinceOffset = offset;
  try {
    while (offset < size && !paused) {
      const upto = Math.min(offset + CHUNK, size);
      controller = new AbortController();
      await call('?flush=n', { method: 'PUT', body: file.slice(offset, upto), signal: controller.signal,
        headers: { 'content-type': 'application/octet-stream', 'content-range': 'bytes ' + offset + '-' + (upto - 1) + '/' + size } });
      offset = upto;
      show();
    }
    if (paused) return;
    const json = { method: 'PATCH', headers: { 'content-type': 'application/json' } };
    if (features.includes('finalize')) {
      const st = await call('', { ...json, body: JSON.stringify({ op: 'finalize' }) });
      say('Upload complete: ' + info.target + ' is ' + st.check.format + (st.check.content ? ' (' + st.check.content + ')' : '') + ', ' + st.size + ' bytes.');
    } else {
      await call('', { ...json, body: JSON.stringify({ op: 'flush' }) });
      say('Upload complete: ' + size + ' bytes written to ' + info.target + '.');
    }
    $('speed').textContent = '';
    buttons({});
  } catch (err) {
    if (!paused) fail('Upload stopped: ', err);
  }
}
$('ticket').onchange = attach;
$('start').onclick = async () => {
  file = $('file').files[0];
  if (!file) return say('Choose a file first.');
  paused = false;
  try { offset = await whereToContinue(); } catch (err) { return fail('Cannot upload: ', err); }
  show();
  loop();
};
$('pause').onclick = () => {
  paused = true; controller?.abort();
  say('Paused at byte ' + offset + '.');
  buttons({ resume: true, cancel: features.includes('cancel') });
};
$('resume').onclick = async () => {
  paused = false;
  try { offset = await whereToContinue(); } catch (err) { return fail('Cannot resume: ', err); }
  show();
  loop();
};
$('cancel').onclick = async () => {
  paused = true; controller?.abort();
  try { await call('', { method: 'DELETE' }); end('Upload cancelled; the partial image was discarded.'); }
  catch (err) { fail('Cancel failed: ', err); }
};
buttons({});
if ($('ticket').value) attach();
`;

export const UPLOAD_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Porthole image upload</title>
<style>body{font:15px system-ui,sans-serif;margin:2em;max-width:44em}progress{width:100%;height:1.4em}button{margin-right:.5em}
#status{min-height:1.5em;font-weight:600}#target{font-weight:600}input[type=text]{width:100%}</style></head>
<body><h1>Upload a disk image or ISO</h1>
<p><label>Ticket <input type="text" id="ticket" autocomplete="off"></label></p>
<p id="target">Target disk: (no ticket yet)</p>
<p><input type="file" id="file"></p>
<p><button id="start" disabled>Upload</button><button id="pause" disabled>Pause</button><button id="resume" disabled>Resume</button><button id="cancel" disabled>Cancel</button></p>
<p><progress id="bar" max="1" value="0"></progress><br><span id="pct">0%</span> <span id="speed"></span></p>
<p id="status" role="status"></p>
<script>${SCRIPT}</script></body></html>
`;

/** Only the page's own inline script may run; it may talk only to this server. */
export const UPLOAD_PAGE_CSP = `default-src 'none'; script-src 'sha256-${createHash('sha256').update(SCRIPT).digest('base64')}'; style-src 'unsafe-inline'; connect-src 'self'`;
