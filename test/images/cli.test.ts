import { strict as assert } from 'node:assert';
import { ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ImageEndpoint, type TicketStatus } from '@porthole/images';
import { makeTestPki, type TestCert } from '../bootiso/fixtures';
import { randomFile, sha256, sha256File } from './helpers';

const MiB = 1024 * 1024;
const CLI = join(__dirname, '..', '..', 'packages', 'broker', 'src', 'cli.ts');
const NODE_ARGS = ['-r', 'tsx/cjs', '--conditions=porthole-src', CLI];

/** Runs `porthole ARGS` (the real CLI from sources); resolves with exit code and output. */
function porthole(args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [...NODE_ARGS, ...args], { cwd: join(__dirname, '..', '..') }, (err, out, errOut) =>
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, out, err: errOut }));
  });
}

describe('images: porthole image CLI', function () {
  this.timeout(60_000);
  let dir: string;
  let storage: string;
  let sock: string;
  let pki: TestCert;
  let serve: ChildProcess;
  let httpsUrl: string;
  let ep: ImageEndpoint;
  const server = () => ['--server', `unix:${sock}`];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-images-cli-'));
    storage = join(dir, 'storage');
    sock = join(dir, 'images.sock');
    pki = makeTestPki(dir, 'cli');
    writeFileSync(join(dir, 'cert.pem'), pki.cert);
    writeFileSync(join(dir, 'key.pem'), pki.key);
    serve = spawn(process.execPath, [...NODE_ARGS, 'image', 'serve', '--storage', storage, '--listen', `unix:${sock}`, 'tcp:127.0.0.1:0',
      '--cert', join(dir, 'cert.pem'), '--key', join(dir, 'key.pem')], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    await new Promise<void>((resolve, reject) => {
      serve.stdout!.on('data', (b: Buffer) => {
        out += b;
        const m = /listening on (https:\/\/\S+)/.exec(out);
        if (m && out.includes(`unix:${sock}`)) {
          httpsUrl = m[1];
          resolve();
        }
      });
      serve.once('exit', (code) => reject(new Error(`image serve exited with ${code}: ${out}`)));
    });
    ep = new ImageEndpoint(`unix:${sock}`);
    // An image the server already holds, for the tests that read one (each test can run alone with --grep).
    writeFileSync(join(storage, 'served.raw'), randomBytes(3 * MiB));
  });
  after(async () => {
    ep?.close();
    serve?.kill('SIGTERM');
    if (serve && serve.exitCode === null) await new Promise((r) => serve.once('exit', r));
    rmSync(dir, { recursive: true, force: true });
  });

  it('serve refuses plain http on a non-loopback address', async () => {
    const r = await porthole(['image', 'serve', '--storage', storage, '--listen', 'tcp:0.0.0.0:0']);
    assert.equal(r.code, 1);
    assert.match(r.err, /refusing plain HTTP on 0\.0\.0\.0: plain HTTP is only allowed on a Unix socket or a loopback address/);
  });

  it('ticket create/status/extend/revoke', async () => {
    const c = await porthole(['image', 'ticket', 'create', 'new.raw', '--size', '4096', '--ops', 'read,write', '--ticket-timeout', '50', '--json', ...server()]);
    assert.equal(c.code, 0, c.err);
    const t = JSON.parse(c.out) as TicketStatus;
    assert.deepEqual([t.image, t.size, t.ops, t.timeout, t.state], ['new.raw', 4096, ['read', 'write'], 50, 'active']);
    const s = await porthole(['image', 'ticket', 'status', t.id, ...server()]);
    assert.match(s.out, new RegExp(`ticket ${t.id}\\n  image new.raw \\(4096 bytes, new\\), ops read,write, state active`));
    const e = await porthole(['image', 'ticket', 'extend', t.id, '600', '--json', ...server()]);
    assert.ok(Date.parse(JSON.parse(e.out).expiresAt) - Date.now() > 500_000, 'expires 600 s from now');
    const r = await porthole(['image', 'ticket', 'revoke', t.id, '--json', ...server()]);
    assert.equal(JSON.parse(r.out).state, 'deleted');
    const again = await porthole(['image', 'ticket', 'extend', t.id, '600', ...server()]);
    assert.equal(again.code, 1);
    assert.match(again.err, /404 No such ticket/);
  });

  it('ticket add takes a ticket in imageio\'s schema (as vdsm sends it)', async () => {
    const uuid = '1c3e0f0e-7d1a-4d4e-9a55-0a1b2c3d4e5f';
    const body = JSON.stringify({ uuid, size: 3 * MiB, ops: ['read'], timeout: 120, url: `file://${join(storage, 'served.raw')}`, transfer_id: 'tr-1' });
    const a = await porthole(['image', 'ticket', 'add', body, '--json', ...server()]);
    assert.equal(a.code, 0, a.err);
    const st = JSON.parse(a.out) as TicketStatus;
    assert.deepEqual([st.uuid, st.image, st.mode, st.transfer_id, st.timeout], [uuid, 'served.raw', 'existing', 'tr-1', 120]);
    const bad = await porthole(['image', 'ticket', 'add', JSON.stringify({ uuid: 'x', size: 1, ops: ['read'], timeout: 1, url: 'file:///etc/shadow' }), ...server()]);
    assert.equal(bad.code, 1);
    assert.match(bad.err, /400 Invalid ticket: a file "url" must name an image in the server's storage directory/);
    assert.equal((await porthole(['image', 'ticket', 'revoke', uuid, ...server()])).code, 0);
  });

  it('upload and download with 4 connections; sha256 of what lands equals what was sent', async () => {
    const src = randomFile(dir, 'disk.raw', 9 * MiB + 3);
    const up = await porthole(['image', 'upload', src.path, 'disk.raw', '--connections', '4', '--json', ...server()]);
    assert.equal(up.code, 0, up.err);
    assert.deepEqual(JSON.parse(up.out), { ok: true, image: 'disk.raw', size: src.data.length, sent: src.data.length, check: { ok: true, format: 'raw', virtualSize: src.data.length } });
    assert.equal(await sha256File(join(storage, 'disk.raw')), sha256(src.data));
    const target = join(dir, 'disk.copy');
    const down = await porthole(['image', 'download', 'disk.raw', target, '--connections', '4', ...server()]);
    assert.equal(down.code, 0, down.err);
    assert.match(down.out, /disk\.copy: 9437187 bytes/);
    assert.equal(await sha256File(target), sha256(src.data));
    // The CLI's own tickets are revoked when it is done.
    assert.deepEqual((await ep.listTickets()).filter((t) => t.image === 'disk.raw').map((t) => t.state), ['finalized', 'deleted']);
  });

  it('--resume continues an unfinished upload of the same name', async () => {
    const src = randomFile(dir, 'half.raw', 4 * MiB);
    const t = await ep.createTicket({ image: 'half.raw', size: src.data.length, ops: ['write'] });
    const res = await ep.request('PUT', `/images/${t.id}`, { body: src.data.subarray(0, 3 * MiB), headers: { 'content-length': 3 * MiB, 'content-range': `bytes 0-${3 * MiB - 1}/${4 * MiB}`, 'content-type': 'application/octet-stream' } });
    res.resume();
    const up = await porthole(['image', 'upload', src.path, 'half.raw', '--resume', '--json', ...server()]);
    assert.equal(up.code, 0, up.err);
    assert.equal(JSON.parse(up.out).sent, MiB);
    assert.equal(await sha256File(join(storage, 'half.raw')), sha256(src.data));
    const none = await porthole(['image', 'upload', src.path, 'nothing.raw', '--resume', ...server()]);
    assert.match(none.err, /--resume: there is no unfinished upload of nothing.raw/);
  });

  it('upload over https with --url/--ticket (a remote client) and a refused qcow2', async () => {
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', '/etc/passwd', '-F', 'raw', join(dir, 'evil.qcow2')]);
    const size = readFileSync(join(dir, 'evil.qcow2')).length;
    const t = await ep.createTicket({ image: 'evil.qcow2', size, ops: ['write'] });
    const up = await porthole(['image', 'upload', join(dir, 'evil.qcow2'), 'evil.qcow2', '--url', httpsUrl, '--ticket', t.id, '--ca', pki.caFile]);
    assert.equal(up.code, 1);
    assert.match(up.err, /422 image refused: qcow2 image has a backing file/);
    assert.doesNotMatch(up.err, /resume with/);
    const read = await ep.createTicket({ image: 'served.raw', ops: ['read'] });
    const down = await porthole(['image', 'download', 'other.raw', join(dir, 'x'), '--url', httpsUrl, '--ticket', read.id, '--ca', pki.caFile]);
    assert.equal(down.code, 1);
    assert.match(down.err, new RegExp(`ticket ${read.id} is for image served.raw, not other.raw\n$`));
  });

  it('import from an https URL (this server, read ticket) with --wait', async () => {
    const read = await ep.createTicket({ image: 'served.raw', ops: ['read'] });
    const r = await porthole(['image', 'import', `${httpsUrl}/images/${read.id}`, 'copy.raw', '--ca', pki.caFile, '--json', ...server()]);
    assert.equal(r.code, 0, r.err);
    const st = JSON.parse(r.out) as TicketStatus;
    assert.equal(st.import?.state, 'done');
    assert.equal(st.import?.url, `${httpsUrl}/images/${read.id}`);
    assert.equal(await sha256File(join(storage, 'copy.raw')), await sha256File(join(storage, 'served.raw')));
  });
});
