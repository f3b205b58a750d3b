import { strict as assert } from 'node:assert';
import { createHash, randomBytes } from 'node:crypto';
import * as http from 'node:http';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { BrokerServer, startBrokerServer } from '@porthole/broker';
import { Guest, startGuest } from './guest';
import { OutputLine, readLines, unixRequest } from './http';

const TOKEN = 'test-token-0123456789abcdef';

interface Task {
  id: string;
  status: string;
  kind: string;
  target: string;
  params: Record<string, unknown>;
  result?: Record<string, unknown>;
  error?: { code: string; message: string };
  outputBytes: number;
  outputRetainedFrom: number;
}

describe('broker: REST API end to end (real agent, real HTTP client)', function () {
  this.timeout(30000);
  let guest: Guest;
  let server: BrokerServer;
  let journal: string;

  const start = (extra: { outputRetention?: number } = {}) =>
    startBrokerServer({ listen: 'tcp:127.0.0.1:0', token: TOKEN, journal, connect: { timeoutMs: 1500 }, ...extra });
  const api = (path: string, init: RequestInit & { json?: unknown } = {}) => fetch(`${server.address}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${TOKEN}`, ...(init.json !== undefined ? { 'content-type': 'application/json' } : {}), ...init.headers as Record<string, string> },
    body: init.json !== undefined ? JSON.stringify(init.json) : init.body,
  });
  const exec = async (body: Record<string, unknown>): Promise<Task> => {
    const res = await api('/v1/tasks/exec', { method: 'POST', json: { target: guest.target, ...body } });
    assert.equal(res.status, 202, await res.clone().text());
    return (await res.json()) as Task;
  };
  const output = async (id: string, query = '', until?: (l: OutputLine) => boolean) => readLines(await api(`/v1/tasks/${id}/output${query}`), until);
  const bytesOf = (lines: OutputLine[], fd?: string) => Buffer.concat(lines.filter((l) => l.type === 'output' && (!fd || l.fd === fd)).map((l) => Buffer.from(l.data!, 'base64')));

  beforeEach(async () => {
    guest = await startGuest((c, root) => {
      c.fileWrite.deny.push(join(root, 'denied'));
    });
    journal = join(guest.dir, 'broker', 'journal.bin');
    server = await start();
  });
  afterEach(async () => {
    await server.close();
    await guest.stop();
  });

  it('serves /openapi.json without a token, and it documents every route the server answers (and no other)', async () => {
    const res = await fetch(`${server.address}/openapi.json`);
    assert.equal(res.status, 200);
    const doc = (await res.json()) as { openapi: string; paths: Record<string, Record<string, unknown>>; components: { schemas: Record<string, unknown> } };
    assert.equal(doc.openapi, '3.1.0');
    const documented = Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${p}`)).sort();
    const served = server.routes.map((r) => r.replace(/:(\w+)/g, '{$1}')).sort();
    assert.deepEqual(documented, served);
    // Every $ref resolves.
    for (const m of JSON.stringify(doc).matchAll(/"\$ref":"#\/components\/schemas\/(\w+)"/g)) assert.ok(doc.components.schemas[m[1]], `missing schema ${m[1]}`);
  });

  it('refuses requests without the right bearer token on TCP, and refuses to listen on TCP without one', async () => {
    const none = await fetch(`${server.address}/v1/tasks`);
    assert.equal(none.status, 401);
    assert.equal(none.headers.get('www-authenticate'), 'Bearer');
    assert.equal(((await none.json()) as { error: { code: string } }).error.code, 'UNAUTHORIZED');
    const wrong = await fetch(`${server.address}/v1/tasks/exec`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}x`, 'content-type': 'application/json' }, body: JSON.stringify({ target: guest.target, argv: ['touch', join(guest.root, 'nope')] }) });
    assert.equal(wrong.status, 401);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(existsSync(join(guest.root, 'nope')), false, 'a refused request runs nothing');
    assert.equal((await api('/v1/health')).status, 200);
    await assert.rejects(startBrokerServer({ listen: 'tcp:127.0.0.1:0', journal: join(guest.dir, 'j2') }), /bearer token is required/);
  });

  it('listens on a Unix socket (mode 0600) without a token', async () => {
    const sock = join(guest.dir, 'run', 'broker.sock');
    const local = await startBrokerServer({ listen: `unix:${sock}`, journal: join(guest.dir, 'j-unix') });
    try {
      assert.equal(local.address, `unix:${sock}`);
      assert.equal(statSync(sock).mode & 0o777, 0o600);
      const r = await unixRequest(sock, 'POST', '/v1/tasks/exec', { target: guest.target, argv: ['echo', 'over a socket'] });
      assert.equal(r.status, 202);
      const id = (r.json as Task).id;
      for (let i = 0; i < 100 && (await unixRequest(sock, 'GET', `/v1/tasks/${id}`)).json && ((await unixRequest(sock, 'GET', `/v1/tasks/${id}`)).json as Task).status === 'running'; i++) await new Promise((res) => setTimeout(res, 20));
      const t = (await unixRequest(sock, 'GET', `/v1/tasks/${id}`)).json as Task;
      assert.equal(t.status, 'done');
      assert.equal(t.outputBytes, 'over a socket\n'.length);
    } finally {
      await local.close();
    }
  });

  it('starts an exec and streams its output live as NDJSON, with the exit status on the last line', async () => {
    const t = await exec({ shell: 'echo first; sleep 1; echo second >&2; exit 3' });
    assert.equal(t.status, 'running');
    const lines = await output(t.id);
    const out = lines.filter((l) => l.type === 'output');
    assert.deepEqual(out.map((l) => [l.fd, Buffer.from(l.data!, 'base64').toString(), l.offset, l.next]), [['stdout', 'first\n', 0, 6], ['stderr', 'second\n', 6, 13]]);
    const end = lines[lines.length - 1];
    assert.equal(end.type, 'end');
    assert.equal(end.task!.status, 'done');
    assert.equal(end.task!.result!.code, 3);
    assert.ok(end.at - out[0].at >= 800, `first line came ${end.at - out[0].at} ms before the end: not live`);
    const text = await output(t.id, '?encoding=utf8&follow=false');
    assert.deepEqual(text.filter((l) => l.type === 'output').map((l) => l.text), ['first\n', 'second\n']);
  });

  it('replays from an offset after a reconnect: every byte once, in order', async () => {
    const t = await exec({ shell: 'for i in 1 2 3 4 5 6; do echo line$i; sleep 0.2; done', stdin: Buffer.from('ignored').toString('base64') });
    // Read until the second line, then drop the connection as a crashed client would.
    const first = await output(t.id, '', (l) => l.type === 'output' && (l.next ?? 0) >= 12);
    const next = first.filter((l) => l.type === 'output').pop()!.next!;
    await new Promise((r) => setTimeout(r, 500)); // output goes on while nobody reads
    const rest = await output(t.id, `?offset=${next}`);
    assert.equal(rest[rest.length - 1].type, 'end');
    const all = Buffer.concat([bytesOf(first), bytesOf(rest)]).toString();
    assert.equal(all, [1, 2, 3, 4, 5, 6].map((i) => `line${i}\n`).join(''));
    // And from inside a chunk.
    const mid = await output(t.id, '?offset=3&encoding=utf8');
    assert.equal(mid.filter((l) => l.type === 'output').map((l) => l.text).join(''), all.slice(3));
  });

  it('cancels a running exec (202), then answers 409 for it and 404 for an unknown task', async () => {
    const t = await exec({ argv: ['sleep', '30'] });
    const following = output(t.id);
    await new Promise((r) => setTimeout(r, 300));
    const c = await api(`/v1/tasks/${t.id}/cancel`, { method: 'POST' });
    assert.equal(c.status, 202);
    const lines = await following;
    const end = lines[lines.length - 1];
    assert.equal(end.task!.status, 'cancelled');
    assert.equal(end.task!.result!.cancelled, true);
    assert.ok(Number(end.task!.result!.durationMs) < 10000);
    const again = await api(`/v1/tasks/${t.id}/cancel`, { method: 'POST' });
    assert.equal(again.status, 409);
    assert.equal(((await again.json()) as { error: { code: string } }).error.code, 'NOT_RUNNING');
    assert.equal((await api('/v1/tasks/no-such-task/cancel', { method: 'POST' })).status, 404);
    assert.equal((await api('/v1/tasks/no-such-task')).status, 404);
  });

  it('keeps env values and secrets out of the task record and the journal file', async () => {
    const t = await exec({ shell: '[ "$API_KEY" = k-8d1f0c ] && echo match "$PASS_WORD"', env: { API_KEY: 'k-8d1f0c', PASS_WORD: 'hunter2-x' }, secrets: ['k-8d1f0c'] });
    const lines = await output(t.id, '?encoding=utf8');
    assert.equal(lines.filter((l) => l.type === 'output').map((l) => l.text).join(''), 'match hunter2-x\n', 'the command saw its env');
    const rec = (await (await api(`/v1/tasks/${t.id}`)).json()) as Task;
    assert.deepEqual(rec.params.envNames, ['API_KEY', 'PASS_WORD']);
    assert.equal(rec.params.shell, '[ "$API_KEY" = *** ] && echo match "$PASS_WORD"');
    assert.ok(!JSON.stringify(rec.params).includes('k-8d1f0c'));
    assert.ok(!readFileSync(journal).includes('k-8d1f0c'), 'the journal file holds no env value');
  });

  it('injects a streamed request body (atomic, sha256-verified) and reports the agent\'s refusal as 403 with no file left', async () => {
    const content = randomBytes(5 * 1024 * 1024 + 17);
    const path = join(guest.root, 'dir', 'blob.bin');
    const q = new URLSearchParams({ target: guest.target, path, mode: '0640', mkdir: 'true' });
    const res = await api(`/v1/tasks/inject?${q}`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: content });
    assert.equal(res.status, 200, await res.clone().text());
    const t = (await res.json()) as Task;
    assert.equal(t.status, 'done');
    assert.equal(t.result!.sha256, createHash('sha256').update(content).digest('hex'));
    assert.equal(t.result!.mode, '0640');
    assert.ok(readFileSync(path).equals(content));
    assert.equal(statSync(path).mode & 0o777, 0o640);
    assert.deepEqual(t.params, { path, mode: '0640', mkdir: true, size: content.length, source: 'request body' });
    assert.ok(!readFileSync(journal).includes(content.subarray(0, 64)), 'no file content in the journal');

    mkdirSync(join(guest.root, 'denied'));
    const deniedPath = join(guest.root, 'denied', 'x.conf');
    const refused = await api(`/v1/tasks/inject?${new URLSearchParams({ target: guest.target, path: deniedPath })}`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: Buffer.alloc(2 * 1024 * 1024, 1) });
    assert.equal(refused.status, 403);
    const body = (await refused.json()) as { error: { code: string; message: string }; task: Task };
    assert.equal(body.error.code, 'POLICY_DENIED');
    assert.match(body.error.message, /disabled by the guest's owner/);
    assert.equal(body.task.status, 'failed');
    assert.deepEqual(readdirSync(join(guest.root, 'denied')), []);
  });

  it('an upload cut short fails its task and leaves no file at the target', async () => {
    const path = join(guest.root, 'cut.bin');
    const url = new URL(`${server.address}/v1/tasks/inject?${new URLSearchParams({ target: guest.target, path })}`);
    const req = http.request({ host: url.hostname, port: url.port, path: url.pathname + url.search, method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/octet-stream', 'content-length': 8 * 1024 * 1024 } });
    req.on('error', () => undefined);
    req.write(Buffer.alloc(1024 * 1024, 5));
    let task: Task | undefined;
    for (let i = 0; i < 100 && !task; i++) {
      await new Promise((r) => setTimeout(r, 20));
      task = ((await (await api('/v1/tasks?kind=inject')).json()) as { tasks: Task[] }).tasks[0];
    }
    req.destroy();
    const end = (await output(task!.id)).pop()!;
    assert.equal(end.task!.status, 'failed', JSON.stringify(end.task));
    assert.equal(existsSync(path), false);
    // The agent drops its partial temporary file once it hears of the failure.
    for (let i = 0; i < 50 && readdirSync(guest.root).length; i++) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(readdirSync(guest.root), [], JSON.stringify(end.task));
  });

  it('answers 400 for bad requests and 502 for an unreachable VM, before any task exists', async () => {
    const bad = async (path: string, init: RequestInit & { json?: unknown }, status: number, pattern: RegExp) => {
      const r = await api(path, init);
      const text = await r.text();
      assert.equal(r.status, status, text);
      assert.match(text, pattern);
    };
    await bad('/v1/tasks/exec', { method: 'POST', json: { target: guest.target } }, 400, /argv|shell/);
    await bad('/v1/tasks/exec', { method: 'POST', json: { target: 'nfs:/x', argv: ['true'] } }, 400, /bad target/);
    await bad('/v1/tasks/exec', { method: 'POST', json: { target: `unix:${join(guest.dir, 'no-vm.sock')}`, argv: ['true'] } }, 502, /UNREACHABLE.*no-vm\.sock/);
    await bad('/v1/tasks/inject', { method: 'POST', json: { target: guest.target, path: '/x', url: 'http://example.org/x' } }, 400, /https/);
    await bad('/v1/tasks/inject?path=/x', { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: 'x' }, 400, /target and path/);
    await bad('/v1/tasks/inject', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'x' }, 415, /octet-stream/);
    await bad('/v1/tasks?status=lost', {}, 400, /status/);
    assert.deepEqual(((await (await api('/v1/tasks')).json()) as { tasks: Task[] }).tasks, []);
  });

  it('starts an injection from an https URL and records the failure cause when the URL cannot be fetched', async () => {
    const res = await api('/v1/tasks/inject', { method: 'POST', json: { target: guest.target, path: join(guest.root, 'u'), url: 'https://127.0.0.1:1/image.iso?signature=abc' } });
    assert.equal(res.status, 202);
    const t = (await res.json()) as Task;
    assert.equal(t.params.url, 'https://127.0.0.1:1/image.iso?…', 'query (signatures) not journaled');
    const end = (await output(t.id)).pop()!;
    assert.equal(end.task!.status, 'failed');
    assert.match(end.task!.error!.message, /cannot fetch https:\/\/127\.0\.0\.1:1\/image\.iso/);
  });

  it('lists and filters tasks, newest first', async () => {
    const a = await exec({ argv: ['true'] });
    await output(a.id);
    const b = await exec({ argv: ['sleep', '5'] });
    const list = async (q: string) => ((await (await api(`/v1/tasks${q}`)).json()) as { tasks: Task[] }).tasks.map((t) => t.id);
    assert.deepEqual(await list(''), [b.id, a.id]);
    assert.deepEqual(await list('?status=running'), [b.id]);
    assert.deepEqual(await list('?status=done&kind=exec'), [a.id]);
    assert.deepEqual(await list('?kind=inject'), []);
    assert.deepEqual(await list('?limit=1'), [b.id]);
    assert.equal(((await (await api('/v1/health')).json()) as { running: number }).running, 1);
    await api(`/v1/tasks/${b.id}/cancel`, { method: 'POST' });
  });

  it('after a broker restart: finished tasks and their output are still there; a task that was running reads as interrupted', async () => {
    const done = await exec({ shell: 'printf "kept output"; exit 7' });
    await output(done.id);
    const running = await exec({ shell: 'echo started; sleep 30' });
    await output(running.id, '', (l) => l.type === 'output');
    await server.close();
    server = await start();
    const d = (await (await api(`/v1/tasks/${done.id}`)).json()) as Task;
    assert.equal(d.status, 'done');
    assert.equal(d.result!.code, 7);
    const replay = await output(done.id, '?encoding=utf8');
    assert.equal(replay.filter((l) => l.type === 'output').map((l) => l.text).join(''), 'kept output');
    assert.equal(replay[replay.length - 1].task!.status, 'done');
    const r = (await (await api(`/v1/tasks/${running.id}`)).json()) as Task;
    assert.equal(r.status, 'interrupted');
    assert.match(r.error!.message, /broker stopped while the task ran/);
    assert.equal(bytesOf(await output(running.id)).toString(), 'started\n');
  });

  it('says which output the retention limit dropped (a gap line), and streams the rest', async () => {
    await server.close();
    server = await start({ outputRetention: 4096 });
    // The pause lets the live reader attach before any output exists: it must then see all of it.
    const t = await exec({ shell: 'sleep 1; head -c 20000 /dev/zero | tr "\\0" a' });
    const lines = await output(t.id);
    await new Promise((r) => setTimeout(r, 50));
    const late = await output(t.id);
    assert.equal(late[0].type, 'gap');
    assert.equal(late[0].from, 0);
    const kept = bytesOf(late);
    assert.equal(kept.length, 4096);
    assert.equal(late[0].to, 20000 - 4096);
    assert.equal(kept.toString(), 'a'.repeat(4096));
    assert.equal(bytesOf(lines).length, 20000, 'a reader that followed from the start saw everything');
  });
});
