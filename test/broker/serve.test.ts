import { strict as assert } from 'node:assert';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import * as https from 'node:https';
import { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Guest, porthole, serve, startGuest } from './guest';
import { readLines } from './http';

describe('broker: porthole serve (its own process)', function () {
  this.timeout(60000);
  let guest: Guest;
  beforeEach(async () => { guest = await startGuest(); });
  afterEach(async () => guest.stop());

  it('prints a generated TCP token once and never logs it; a restart keeps the journal; SIGTERM exits 0', async () => {
    const journal = join(guest.dir, 'journal.bin');
    const first = await serve(['--listen', 'tcp:127.0.0.1:0', '--journal', journal]);
    assert.match(first.address, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.ok(first.token && first.token.length >= 40);
    const auth = { authorization: `Bearer ${first.token}`, 'content-type': 'application/json' };
    const res = await fetch(`${first.address}/v1/tasks/exec`, { method: 'POST', headers: auth, body: JSON.stringify({ target: guest.target, argv: ['echo', 'survives'] }) });
    assert.equal(res.status, 202);
    const { id } = (await res.json()) as { id: string };
    const lines = await readLines(await fetch(`${first.address}/v1/tasks/${id}/output`, { headers: auth }));
    assert.equal(lines.pop()!.task!.status, 'done');
    assert.equal((await fetch(`${first.address}/v1/tasks`)).status, 401);
    assert.equal(await first.stop(), 0);
    assert.equal(first.stdout().split(first.token!).length, 2, 'printed exactly once');
    assert.ok(!first.stderr().includes(first.token!), 'not in the log');
    assert.match(first.stderr(), /"message":"request".*"route":"\/v1\/tasks\/exec".*"status":202/);
    assert.equal(statSync(journal).mode & 0o777, 0o600);

    // Restarted with a token from a file: the task is still there, and no token is printed.
    const tokenFile = join(guest.dir, 'token');
    writeFileSync(tokenFile, 'file-token-abcdefghijklmnop\n', { mode: 0o600 });
    const second = await serve(['--listen', 'tcp:127.0.0.1:0', '--journal', journal, '--token-file', tokenFile]);
    try {
      assert.equal(second.token, undefined);
      const t = await fetch(`${second.address}/v1/tasks/${id}`, { headers: { authorization: 'Bearer file-token-abcdefghijklmnop' } });
      assert.equal(t.status, 200);
      const task = (await t.json()) as { status: string; outputBytes: number; params: { argv: string[] } };
      assert.deepEqual([task.status, task.outputBytes, task.params.argv], ['done', 'survives\n'.length, ['echo', 'survives']]);
      assert.equal((await fetch(`${second.address}/v1/tasks/${id}`, { headers: { authorization: `Bearer ${first.token}` } })).status, 401, 'the old token is gone');
    } finally {
      await second.stop();
    }
  });

  it('injects from an https URL the broker fetches itself (driven with curl over the Unix socket)', async () => {
    const dir = guest.dir;
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    const content = randomBytes(3 * 1024 * 1024);
    const web = https.createServer({ key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) }, (req, res) => {
      if (req.url !== '/files/app.tar') return void res.writeHead(404).end();
      res.writeHead(200, { 'content-length': content.length }).end(content);
    });
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
    const url = `https://127.0.0.1:${(web.address() as AddressInfo).port}/files/app.tar`;
    const sock = join(dir, 'broker.sock');
    // The broker trusts the test's certificate through Node's extra CA bundle.
    const broker = await serve(['--listen', `unix:${sock}`, '--journal', join(dir, 'j.bin')], { NODE_EXTRA_CA_CERTS: join(dir, 'cert.pem') });
    try {
      assert.equal(broker.address, `unix:${sock}`);
      assert.equal(broker.token, undefined, 'no token on a Unix socket');
      // Asynchronous: the agent answers from this process.
      const curl = async (...args: string[]) => (await promisify(execFile)('curl', ['-sS', '--unix-socket', sock, ...args], { encoding: 'utf8' })).stdout;
      const path = join(guest.root, 'opt', 'app.tar');
      const started = JSON.parse(await curl('-X', 'POST', '-H', 'content-type: application/json', '--data', JSON.stringify({ target: guest.target, path, url, mkdir: true, mode: '0600' }), 'http://localhost/v1/tasks/inject'));
      assert.equal(started.status, 'running', JSON.stringify(started));
      const lines = (await curl(`http://localhost/v1/tasks/${started.id}/output`)).trim().split('\n').map((l) => JSON.parse(l) as { type: string; task?: { status: string; result: { sha256: string; size: number } } });
      const end = lines.pop()!;
      assert.equal(end.type, 'end');
      assert.equal(end.task!.status, 'done', JSON.stringify(end));
      assert.equal(end.task!.result.sha256, createHash('sha256').update(content).digest('hex'));
      assert.ok(lines.every((l) => l.type === 'progress'), 'only progress before the end line');
      assert.ok(readFileSync(path).equals(content));
      assert.equal(statSync(path).mode & 0o777, 0o600);
    } finally {
      await broker.stop();
      web.close();
    }
  });

  it('exits 2 for a bad --listen or token file, naming it', async () => {
    const r = await porthole(['serve', '--listen', 'http://0.0.0.0', '--journal', join(guest.dir, 'j')]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /bad --listen "http:\/\/0\.0\.0\.0": use unix:/);
    const t = await porthole(['serve', '--listen', 'tcp:127.0.0.1:0', '--token-file', join(guest.dir, 'missing'), '--journal', join(guest.dir, 'j')]);
    assert.equal(t.code, 2);
    assert.match(t.stderr, /cannot read the token file .*missing/);
  });
});
