// ovirt-imageio conformance, written from imageio's published documentation (docs/images.md, docs/unix-socket.md)
// and its documented ticket semantics: the control API vdsm drives, the data API imageio's clients drive, and the
// safety rules of this server on top.
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createImageServer, ImageEndpoint, type ImageServer } from '@porthole/images';
import { call, sha256, sha256File, startQemuNbd } from './helpers';

const MiB = 1024 * 1024;
const PORTAL = 'https://engine.example:8443';
const qemuImg = (...args: string[]) => execFileSync('qemu-img', args, { stdio: ['ignore', 'ignore', 'pipe'] });

/** imageio's blkhash computed independently with Python's hashlib (what imageio's client does locally). */
function pythonBlkhash(file: string, algorithm = 'blake2b', blockSize = 4 * MiB): string {
  const script = `
import hashlib, sys
alg, bs, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mk = (lambda d=b"": hashlib.new(alg, d, digest_size=32)) if alg.startswith("blake2") else (lambda d=b"": hashlib.new(alg, d))
outer = mk()
with open(path, "rb") as f:
    while True:
        block = f.read(bs)
        if not block:
            break
        outer.update(mk(block).digest())
print(outer.hexdigest())
`;
  return execFileSync('python3', ['-c', script, algorithm, String(blockSize), file]).toString().trim();
}

describe('images: ovirt-imageio conformance (control API, data API, safety)', function () {
  this.timeout(60_000);
  let dir: string;
  let storage: string;
  let sock: string;
  let server: ImageServer;
  let ctl: ImageEndpoint;
  let data: ImageEndpoint;

  const tcpUrl = () => server.urls.find((u) => u.startsWith('http:')) as string;
  async function start(extra: object = {}): Promise<void> {
    server = await createImageServer({ storageDir: storage, listen: [`unix:${sock}`, 'tcp:127.0.0.1:0'], corsOrigins: [PORTAL], ...extra });
    ctl = new ImageEndpoint(`unix:${sock}`, { connections: 2 });
    data = new ImageEndpoint(tcpUrl(), { connections: 4 });
  }
  async function stop(): Promise<void> {
    ctl?.close();
    data?.close();
    await server?.close();
  }
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-imageio-'));
    storage = join(dir, 'storage');
    sock = join(dir, 'images.sock');
  });
  beforeEach(() => start());
  afterEach(() => stop());
  after(() => rmSync(dir, { recursive: true, force: true }));

  const json = (body: unknown) => ({ body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
  /** PUT /tickets/<uuid> over the control socket, as vdsm does (a JSON body without a Content-Type). */
  async function addTicket(t: Record<string, unknown>): Promise<{ status: number; json: () => any; data: Buffer }> {
    return call(ctl, 'PUT', `/tickets/${t.uuid}`, { body: JSON.stringify(t) });
  }
  function ticket(name: string, size: number, ops = ['read', 'write'], extra: object = {}): Record<string, unknown> {
    return { uuid: randomUUID(), size, ops, timeout: 300, url: `file://${join(storage, name)}`, inactivity_timeout: 60, transfer_id: randomUUID(), ...extra };
  }
  const put = (id: string, body: Buffer, offset = 0, query = '') =>
    call(data, 'PUT', `/images/${id}${query}`, { body, headers: { 'content-type': 'application/octet-stream', 'content-length': body.length, 'content-range': `bytes ${offset}-${offset + body.length - 1}/*` } });
  const patch = (id: string, msg: unknown, contentType = 'application/json') => call(data, 'PATCH', `/images/${id}`, { body: typeof msg === 'string' ? msg : JSON.stringify(msg), headers: { 'content-type': contentType } });

  describe('control API (/tickets on the Unix socket)', () => {
    it('PUT adds a ticket in imageio\'s schema; GET reports imageio\'s fields', async () => {
      writeFileSync(join(storage, 'disk.raw'), Buffer.alloc(MiB));
      const t = ticket('disk.raw', MiB, ['write'], { filename: 'disk.raw', sparse: true });
      const r = await addTicket(t);
      assert.equal(r.status, 200);
      assert.equal(r.data.length, 0);
      const info = (await call(ctl, 'GET', `/tickets/${t.uuid}`)).json();
      for (const k of ['uuid', 'url', 'size', 'ops', 'timeout', 'inactivity_timeout', 'transfer_id', 'filename', 'sparse']) assert.deepEqual(info[k], t[k], k);
      assert.equal(info.dirty, false);
      assert.equal(info.active, false);
      assert.equal(info.canceled, false);
      assert.equal(info.connections, 0);
      assert.equal(info.transferred, 0, 'a write-only ticket reports transferred');
      assert.equal(typeof info.expires, 'number');
      assert.equal(typeof info.idle_time, 'number');
      await put(t.uuid as string, randomBytes(4096), 8192, '?flush=n');
      const after = (await call(ctl, 'GET', `/tickets/${t.uuid}`)).json();
      assert.equal(after.transferred, 4096);
      assert.equal(after.connections, 1, 'the keep-alive connection that used it');
    });

    it('PUT refuses invalid tickets with 400, naming the field and never a host path', async () => {
      const base = ticket('x.raw', MiB, ['write']);
      const cases: Array<[Record<string, unknown>, RegExp]> = [
        [{ ...base, size: undefined }, /missing required parameter "size"/],
        [{ ...base, ops: 'write' }, /"ops" must be a list/],
        [{ ...base, ops: ['delete'] }, /ops must list/],
        [{ ...base, timeout: '300' }, /"timeout" must be a non-negative integer/],
        [{ ...base, url: 'http://example/x' }, /unsupported url scheme "http"/],
        [{ ...base, url: 'file:///etc/shadow' }, /must name an image in the server's storage directory/],
        [{ ...base, url: `file://${storage}/../secret` }, /must name an image in the server's storage directory/],
        [{ ...base, url: `file://${storage}/.x.refused` }, /must name an image in the server's storage directory/],
        [{ ...base, sparse: 'yes' }, /"sparse" must be a boolean/],
      ];
      for (const [body, why] of cases) {
        const clean = JSON.parse(JSON.stringify(body));
        const r = await call(ctl, 'PUT', `/tickets/${clean.uuid}`, json(clean));
        assert.equal(r.status, 400, JSON.stringify(body));
        assert.match(r.json().error, why);
        assert.doesNotMatch(r.json().error, new RegExp(storage.replace(/[/.]/g, '\\$&')));
        assert.doesNotMatch(r.json().error, /\/etc\/shadow/);
      }
      assert.equal((await call(ctl, 'PUT', `/tickets/other`, json(base))).status, 400, 'uuid must match the URL');
      assert.equal((await call(ctl, 'PUT', '/tickets/', json(base))).status, 400);
      assert.equal((await call(ctl, 'GET', '/tickets/')).status, 400);
      assert.equal((await call(ctl, 'PUT', `/tickets/${base.uuid}`, { body: '{not json', headers: { 'content-type': 'application/json' } })).status, 400);
      assert.equal((await call(ctl, 'GET', `/tickets/${randomUUID()}`)).status, 404);
    });

    it('PUT of the same uuid again renews it; with another target it is a conflict', async () => {
      const t = ticket('r.raw', MiB, ['write']);
      assert.equal((await addTicket(t)).status, 200);
      assert.equal((await addTicket({ ...t, timeout: 900 })).status, 200);
      assert.equal((await call(ctl, 'GET', `/tickets/${t.uuid}`)).json().timeout, 900);
      assert.equal((await addTicket({ ...t, url: `file://${join(storage, 'other.raw')}` })).status, 409);
    });

    it('PATCH extends a ticket, also one that has expired; unknown is 404, a bad timeout 400', async () => {
      writeFileSync(join(storage, 'e.raw'), randomBytes(MiB));
      const t = ticket('e.raw', MiB, ['read'], { timeout: 1 });
      await addTicket(t);
      await sleep(1200);
      const refused = await call(data, 'GET', `/images/${t.uuid}`, { headers: { range: 'bytes=0-9' } });
      assert.equal(refused.status, 403);
      assert.match(refused.json().error, /expired/);
      const p = await call(ctl, 'PATCH', `/tickets/${t.uuid}`, json({ timeout: 60 }));
      assert.equal(p.status, 200);
      assert.equal((await call(data, 'GET', `/images/${t.uuid}`, { headers: { range: 'bytes=0-9' } })).status, 206);
      assert.equal((await call(ctl, 'PATCH', `/tickets/${randomUUID()}`, json({ timeout: 60 }))).status, 404);
      assert.equal((await call(ctl, 'PATCH', `/tickets/${t.uuid}`, json({ timeout: 'x' }))).status, 400);
    });

    it('DELETE is idempotent: 204 for a live ticket, again, and for an unknown one; then GET is 404 and data 403', async () => {
      writeFileSync(join(storage, 'd.raw'), randomBytes(MiB));
      const t = ticket('d.raw', MiB, ['read']);
      await addTicket(t);
      for (let i = 0; i < 2; i++) assert.equal((await call(ctl, 'DELETE', `/tickets/${t.uuid}`)).status, 204);
      assert.equal((await call(ctl, 'DELETE', `/tickets/${randomUUID()}`)).status, 204);
      assert.equal((await call(ctl, 'GET', `/tickets/${t.uuid}`)).status, 404);
      assert.equal((await call(data, 'GET', `/images/${t.uuid}`)).status, 403);
    });

    it('DELETE during a PUT cancels it and returns only after it has stopped; what landed stays, nothing lands later', async () => {
      writeFileSync(join(storage, 'w.raw'), Buffer.alloc(16 * MiB));
      const t = ticket('w.raw', 16 * MiB, ['write']);
      await addTicket(t);
      const payload = randomBytes(16 * MiB);
      const url = new URL(tcpUrl());
      const req = http.request({ host: url.hostname, port: url.port, method: 'PUT', path: `/images/${t.uuid}?flush=n`, headers: { 'content-length': payload.length, 'content-range': `bytes 0-${payload.length - 1}/*` } });
      const answer = new Promise<string>((resolve) => {
        req.on('response', (res) => { res.resume(); resolve(String(res.statusCode)); });
        req.on('error', (e) => resolve(`error ${e.message}`));
      });
      req.write(payload.subarray(0, 4 * MiB));
      while (((await call(ctl, 'GET', `/tickets/${t.uuid}`)).json().transferred ?? 0) < 4 * MiB) await sleep(20);
      assert.equal((await call(ctl, 'GET', `/tickets/${t.uuid}`)).json().active, true);
      const del = await call(ctl, 'DELETE', `/tickets/${t.uuid}`);
      assert.equal(del.status, 204);
      assert.match(await answer, /^403$|error/, 'the PUT was canceled');
      const after = readFileSync(join(storage, 'w.raw'));
      assert.ok(after.subarray(0, 4 * MiB).equals(payload.subarray(0, 4 * MiB)), 'what arrived before the DELETE landed');
      req.write(payload.subarray(4 * MiB), () => undefined);
      await sleep(300);
      assert.ok(readFileSync(join(storage, 'w.raw')).equals(after), 'nothing written after DELETE returned');
      req.destroy();
    });

    it('the control API is not on TCP without a token; with one it needs the bearer token', async () => {
      assert.equal((await call(data, 'GET', '/tickets')).status, 404);
      await stop();
      await start({ controlToken: 's3cret-token' });
      assert.equal((await call(data, 'GET', '/tickets')).status, 401);
      const ok = await call(data, 'GET', '/tickets', { headers: { authorization: 'Bearer s3cret-token' } });
      assert.equal(ok.status, 200);
    });
  });

  describe('data API (/images/<ticket>)', () => {
    it('OPTIONS: features, max_readers/max_writers for a ticket, unix_socket, Allow', async () => {
      const star = await call(data, 'OPTIONS', '/images/*');
      assert.equal(star.status, 200);
      assert.equal(star.json().unix_socket, sock);
      assert.ok(['checksum', 'extents', 'flush', 'zero'].every((f) => star.json().features.includes(f)));
      writeFileSync(join(storage, 'o.raw'), Buffer.alloc(MiB));
      const rw = ticket('o.raw', MiB, ['write']);
      await addTicket(rw);
      const o = await call(data, 'OPTIONS', `/images/${rw.uuid}`);
      assert.equal(o.json().max_readers, 8);
      assert.equal(o.json().max_writers, 8);
      assert.match(String(o.headers.allow), /^OPTIONS,GET,HEAD,PUT,PATCH/);
      const ro = ticket('o.raw', MiB, ['read']);
      await addTicket(ro);
      assert.deepEqual((await call(data, 'OPTIONS', `/images/${ro.uuid}`)).json().features, ['checksum', 'extents']);
      // Over the advertised Unix socket too (imageio's local service).
      assert.equal((await call(ctl, 'OPTIONS', `/images/${ro.uuid}`)).json().max_readers, 8);
    });

    it('write implies read: a write-only ticket can GET, get extents and checksum', async () => {
      const content = randomBytes(MiB);
      writeFileSync(join(storage, 'wr.raw'), content);
      const t = ticket('wr.raw', MiB, ['write']);
      await addTicket(t);
      const g = await call(data, 'GET', `/images/${t.uuid}`, { headers: { range: 'bytes=0-1023' } });
      assert.equal(g.status, 206);
      assert.ok(g.data.equals(content.subarray(0, 1024)));
      assert.equal((await call(data, 'GET', `/images/${t.uuid}/extents`)).status, 200);
      assert.equal((await call(data, 'GET', `/images/${t.uuid}/checksum`)).status, 200);
    });

    it('416 for ranges past the ticket or the image, with Content-Range bytes */size', async () => {
      writeFileSync(join(storage, 'r.raw'), randomBytes(MiB));
      const t = ticket('r.raw', 2 * MiB, ['read', 'write']);
      await addTicket(t);
      const w = await put(t.uuid as string, Buffer.alloc(10), 2 * MiB - 5);
      assert.equal(w.status, 416);
      assert.equal(w.headers['content-range'], `bytes */${2 * MiB}`);
      const g = await call(data, 'GET', `/images/${t.uuid}`, { headers: { range: `bytes=0-${2 * MiB}` } });
      assert.equal(g.status, 416);
      assert.equal(g.headers['content-range'], `bytes */${2 * MiB}`);
      const avail = await call(data, 'GET', `/images/${t.uuid}`, { headers: { range: `bytes=0-${MiB}` } });
      assert.equal(avail.status, 416, 'past what the image holds');
      assert.equal(avail.headers['content-range'], `bytes */${MiB}`);
      assert.equal((await call(data, 'GET', `/images/${t.uuid}`, { headers: { range: 'bytes=0-1,4-5' } })).status, 416);
      assert.equal((await patch(t.uuid as string, { op: 'zero', offset: 2 * MiB - 1, size: 2 })).status, 416);
      const ok = await call(data, 'GET', `/images/${t.uuid}`, { headers: { range: `bytes=${MiB - 10}-${MiB - 1}` } });
      assert.equal(ok.status, 206);
      assert.equal(ok.headers['content-range'], `bytes ${MiB - 10}-${MiB - 1}/${2 * MiB}`);
    });

    it('PATCH validation: zero needs size, ops and types are checked; curl\'s form content type is accepted', async () => {
      writeFileSync(join(storage, 'p.raw'), randomBytes(MiB));
      const t = ticket('p.raw', MiB, ['write']);
      await addTicket(t);
      const id = t.uuid as string;
      const noSize = await patch(id, { op: 'zero', offset: 4096 });
      assert.equal(noSize.status, 400);
      assert.match(noSize.json().error, /Missing required value for "size"/);
      assert.equal((await patch(id, { offset: 0, size: 1 })).status, 400);
      assert.equal((await patch(id, { op: 'trim', size: 1 })).status, 400);
      assert.equal((await patch(id, { op: 'zero', size: '1' })).status, 400);
      assert.equal((await patch(id, { op: 'zero', size: 1, flush: 'y' })).status, 400);
      assert.equal((await patch(id, '{"op": ')).status, 400);
      const form = await patch(id, '{"op": "zero", "offset": 4096, "size": 8192}', 'application/x-www-form-urlencoded');
      assert.equal(form.status, 200);
      assert.ok(readFileSync(join(storage, 'p.raw')).subarray(4096, 12288).equals(Buffer.alloc(8192)));
      assert.equal((await patch(id, { op: 'flush' })).status, 200);
      assert.equal((await put(id, Buffer.alloc(1), 0, '?flush=maybe')).status, 400);
    });

    it('extents: zero extents of a raw file; dirty extents 404 unless the ticket and backend support them; bad context 400', async () => {
      const path = join(storage, 'x.raw');
      execFileSync('truncate', ['-s', String(8 * MiB), path]);
      const t = ticket('x.raw', 8 * MiB, ['read'], { dirty: false });
      await addTicket(t);
      assert.deepEqual((await call(data, 'GET', `/images/${t.uuid}/extents`)).json(), [{ start: 0, length: 8 * MiB, zero: true, hole: false }]);
      const d = await call(data, 'GET', `/images/${t.uuid}/extents?context=dirty`);
      assert.equal(d.status, 404);
      assert.equal((await call(data, 'GET', `/images/${t.uuid}/extents?context=bogus`)).status, 400);
      const t2 = ticket('x.raw', 8 * MiB, ['read'], { dirty: true });
      await addTicket(t2);
      assert.equal((await call(data, 'GET', `/images/${t2.uuid}/extents?context=dirty`)).status, 404, 'a file has no dirty bitmap');
    });

    it('checksum: imageio\'s block checksum with algorithm and block_size, equal to Python\'s hashlib; algorithms list', async () => {
      const path = join(storage, 'c.raw');
      const content = Buffer.alloc(10 * MiB + 4096);
      randomBytes(3 * MiB).copy(content, MiB);
      writeFileSync(path, content);
      const t = ticket('c.raw', content.length, ['read']);
      await addTicket(t);
      const def = (await call(data, 'GET', `/images/${t.uuid}/checksum`)).json();
      assert.deepEqual(def, { algorithm: 'blake2b', block_size: 4 * MiB, checksum: pythonBlkhash(path) });
      const sha = (await call(data, 'GET', `/images/${t.uuid}/checksum?algorithm=sha256&block_size=${2 * MiB}`)).json();
      assert.equal(sha.checksum, pythonBlkhash(path, 'sha256', 2 * MiB));
      assert.equal((await call(data, 'GET', `/images/${t.uuid}/checksum?algorithm=crc32`)).status, 400);
      assert.equal((await call(data, 'GET', `/images/${t.uuid}/checksum?block_size=4097`)).status, 400);
      assert.equal((await call(data, 'GET', `/images/${t.uuid}/checksum?block_size=4096`)).status, 400);
      assert.ok((await call(data, 'GET', `/images/${t.uuid}/checksum/algorithms`)).json().algorithms.includes('blake2b'));
      const range = (await call(data, 'GET', `/images/${t.uuid}/checksum?offset=${MiB}&length=4096`)).json();
      assert.deepEqual(range, { algorithm: 'sha256', offset: MiB, length: 4096, checksum: sha256(content.subarray(MiB, MiB + 4096)) });
    });

    it('GET /info/ answers the server version; GET names the download in Content-Disposition', async () => {
      const info = await call(data, 'GET', '/info/');
      assert.equal(info.status, 200);
      assert.match(info.json().version, /^\d+\.\d+\.\d+$/);
      writeFileSync(join(storage, 'n.raw'), randomBytes(1000));
      const t = ticket('n.raw', 1000, ['read'], { filename: 'fedora.raw' });
      await addTicket(t);
      const g = await call(data, 'GET', `/images/${t.uuid}`);
      assert.equal(g.status, 200);
      assert.equal(g.headers['content-disposition'], 'attachment; filename=fedora.raw');
    });

    it('CORS for the configured portal origin only', async () => {
      writeFileSync(join(storage, 'cors.raw'), randomBytes(1000));
      const t = ticket('cors.raw', 1000, ['read', 'write']);
      await addTicket(t);
      const pre = await call(data, 'OPTIONS', `/images/${t.uuid}`, { headers: { origin: PORTAL, 'access-control-request-method': 'PUT', 'access-control-request-headers': 'content-range,content-type' } });
      assert.equal(pre.status, 204);
      assert.equal(pre.headers['access-control-allow-origin'], PORTAL);
      assert.match(String(pre.headers['access-control-allow-methods']), /PUT/);
      assert.equal(pre.headers['access-control-allow-headers'], 'content-range,content-type');
      const g = await call(data, 'GET', `/images/${t.uuid}`, { headers: { origin: PORTAL } });
      assert.equal(g.headers['access-control-allow-origin'], PORTAL);
      const other = await call(data, 'GET', `/images/${t.uuid}`, { headers: { origin: 'https://evil.example' } });
      assert.equal(other.headers['access-control-allow-origin'], undefined);
      const otherPre = await call(data, 'OPTIONS', `/images/${t.uuid}`, { headers: { origin: 'https://evil.example', 'access-control-request-method': 'PUT' } });
      assert.equal(otherPre.headers['access-control-allow-origin'], undefined);
    });

    it('an idle connection is closed after the ticket\'s inactivity_timeout, not before', async () => {
      writeFileSync(join(storage, 'i.raw'), randomBytes(1000));
      const open = async (inactivity: number) => {
        const t = ticket('i.raw', 1000, ['read'], { inactivity_timeout: inactivity });
        await addTicket(t);
        const url = new URL(tcpUrl());
        const s = netConnect({ host: url.hostname, port: Number(url.port) });
        let closedAt = 0;
        s.on('close', () => (closedAt = Date.now()));
        s.on('data', () => undefined);
        s.write(`GET /images/${t.uuid} HTTP/1.1\r\nHost: localhost\r\nRange: bytes=0-9\r\n\r\n`);
        await sleep(100);
        return { s, closed: () => closedAt };
      };
      const short = await open(1);
      const long = await open(8);
      await sleep(2000);
      assert.ok(short.closed() > 0, 'closed after 1 s idle');
      assert.equal(long.closed(), 0, 'still open at 2 s');
      await sleep(4500);
      assert.equal(long.closed(), 0, 'still open after 6.5 s idle (inactivity_timeout 8)');
      long.s.destroy();
    });
  });

  describe('flows and safety', () => {
    it('the engine\'s flow publishes a new image: PUT (flush=n), PATCH zero, PATCH flush, DELETE ticket', async () => {
      const content = Buffer.alloc(12 * MiB);
      randomBytes(4 * MiB).copy(content, 0);
      randomBytes(MiB).copy(content, 11 * MiB);
      const t = ticket('new.raw', content.length, ['write']);
      await addTicket(t);
      const id = t.uuid as string;
      assert.equal((await put(id, content.subarray(0, 4 * MiB), 0, '?flush=n')).status, 200);
      assert.equal((await patch(id, { op: 'zero', offset: 4 * MiB, size: 7 * MiB })).status, 200);
      assert.equal((await put(id, content.subarray(11 * MiB), 11 * MiB, '?flush=n')).status, 200);
      assert.equal((await patch(id, { op: 'flush' })).status, 200);
      assert.ok(!existsSync(join(storage, 'new.raw')), 'not published before the ticket is deleted');
      assert.equal((await call(ctl, 'DELETE', `/tickets/${id}`)).status, 204);
      assert.equal(await sha256File(join(storage, 'new.raw')), sha256(content));
      assert.deepEqual(readdirSync(storage).filter((f) => f.startsWith('.')), [], 'no staging file left');
    });

    it('a qcow2 with a backing file: refused at flush for a new image, and at DELETE when written in place without a flush', async () => {
      qemuImg('create', '-q', '-f', 'qcow2', '-b', '/etc/shadow', '-F', 'raw', join(dir, 'evil.qcow2'), '1M');
      const evil = readFileSync(join(dir, 'evil.qcow2'));
      const fresh = ticket('fresh.qcow2', evil.length, ['write']);
      await addTicket(fresh);
      assert.equal((await put(fresh.uuid as string, evil, 0, '?flush=n')).status, 200);
      const f = await patch(fresh.uuid as string, { op: 'flush' });
      assert.equal(f.status, 422);
      assert.match(f.json().error, /backing file/);
      await call(ctl, 'DELETE', `/tickets/${fresh.uuid}`);
      assert.ok(!existsSync(join(storage, 'fresh.qcow2')));

      writeFileSync(join(storage, 'vm.raw'), randomBytes(2 * MiB));
      const inplace = ticket('vm.raw', 2 * MiB, ['write']);
      await addTicket(inplace);
      assert.equal((await put(inplace.uuid as string, evil, 0, '?flush=n')).status, 200);
      // While it is unchecked nobody else may use it.
      const reader = ticket('vm.raw', 2 * MiB, ['read']);
      assert.equal((await addTicket(reader)).status, 409);
      assert.equal((await call(ctl, 'DELETE', `/tickets/${inplace.uuid}`)).status, 204);
      assert.ok(!existsSync(join(storage, 'vm.raw')), 'the image is no longer under its name');
      assert.ok(existsSync(join(storage, '.vm.raw.refused')));
      assert.ok(!existsSync(join(storage, '.vm.raw.unchecked')));
    });

    it('the default flush=y of PUT runs the quick check at once', async () => {
      qemuImg('create', '-q', '-f', 'qcow2', '-o', `data_file=${join(dir, 'df.bin')}`, join(dir, 'df.qcow2'), '1M');
      const evil = readFileSync(join(dir, 'df.qcow2'));
      writeFileSync(join(storage, 'vm2.raw'), Buffer.alloc(MiB));
      const t = ticket('vm2.raw', MiB, ['write']);
      await addTicket(t);
      const r = await put(t.uuid as string, evil);
      assert.equal(r.status, 422);
      assert.match(r.json().error, /external data file/);
      assert.ok(!existsSync(join(storage, 'vm2.raw')));
    });

    it('an in-place writer that expires is quick-checked even if nobody deletes its ticket', async () => {
      qemuImg('create', '-q', '-f', 'qcow2', '-b', '/etc/shadow', '-F', 'raw', join(dir, 'evil3.qcow2'), '1M');
      const evil = readFileSync(join(dir, 'evil3.qcow2'));
      writeFileSync(join(storage, 'left.raw'), Buffer.alloc(MiB));
      const t = ticket('left.raw', MiB, ['write'], { timeout: 1 });
      await addTicket(t);
      assert.equal((await put(t.uuid as string, evil, 0, '?flush=n')).status, 200);
      assert.ok(existsSync(join(storage, 'left.raw')));
      await sleep(2500);
      assert.ok(!existsSync(join(storage, 'left.raw')), 'moved away after the ticket expired');
      assert.ok(existsSync(join(storage, '.left.raw.refused')));
      assert.equal((await call(ctl, 'GET', `/tickets/${t.uuid}`)).json().state, 'refused');
    });

    it('an in-place write never checked (server stopped) is checked when the server starts again', async () => {
      qemuImg('create', '-q', '-f', 'qcow2', '-b', '/etc/passwd', '-F', 'raw', join(dir, 'evil2.qcow2'), '1M');
      const evil = readFileSync(join(dir, 'evil2.qcow2'));
      writeFileSync(join(storage, 'crash.raw'), Buffer.alloc(MiB));
      const t = ticket('crash.raw', MiB, ['write']);
      await addTicket(t);
      assert.equal((await put(t.uuid as string, evil, 0, '?flush=n')).status, 200);
      await stop();
      assert.ok(existsSync(join(storage, '.crash.raw.unchecked')));
      await start();
      assert.ok(!existsSync(join(storage, 'crash.raw')));
      assert.ok(existsSync(join(storage, '.crash.raw.refused')));
    });

    it('limits are checked when the ticket is made: 400 for 1 PiB and 10 TiB, never 500', async () => {
      for (const size of [2 ** 50, 10 * 2 ** 40]) {
        const a = await call(ctl, 'POST', '/tickets', json({ image: `big${size}.raw`, size, ops: ['write'] }));
        assert.equal(a.status, 400, String(size));
        assert.match(a.json().error, /exceeds this server's limit/);
        const b = await addTicket(ticket(`big${size}.raw`, size, ['write']));
        assert.equal(b.status, 400);
      }
      await stop();
      await start({ maxVirtualSize: 2 ** 53 - 1 });
      // Past what the file system holds (ext4: 16 TiB): still a 400 naming the cause.
      const c = await call(ctl, 'POST', '/tickets', json({ image: 'huge.raw', size: 2 ** 50, ops: ['write'] }));
      assert.equal(c.status, 400);
      assert.match(c.json().error, /larger than the storage file system can hold/);
      assert.deepEqual(readdirSync(storage).filter((f) => f.includes('huge')), []);
    });

    it('no host path in any error', async () => {
      const t = ticket('gone.raw', MiB, ['write']);
      await addTicket(t);
      for (const f of readdirSync(storage)) if (f.startsWith('.gone.raw.')) rmSync(join(storage, f));
      const r = await put(t.uuid as string, randomBytes(100));
      assert.ok(r.status >= 400);
      assert.doesNotMatch(r.data.toString(), new RegExp(dir.replace(/[/.]/g, '\\$&')));
      // qemu-img's own message about a broken image names the file: the path is cut out.
      const broken = Buffer.alloc(MiB);
      Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]).copy(broken);
      broken.writeBigUInt64BE(BigInt(MiB), 24);
      const b = await call(ctl, 'POST', '/tickets', json({ image: 'broken.qcow2', size: MiB, ops: ['write'] }));
      const id = b.json().id;
      await put(id, broken, 0, '?flush=n');
      const fin = await patch(id, { op: 'finalize' });
      assert.equal(fin.status, 422);
      assert.doesNotMatch(fin.data.toString(), new RegExp(dir.replace(/[/.]/g, '\\$&')));
    });

    it('an upload paused past its timeout keeps its staged bytes; the owner extends the ticket and finishes', async () => {
      const content = randomBytes(4 * MiB);
      const c = await call(ctl, 'POST', '/tickets', json({ image: 'paused.raw', size: content.length, ops: ['write'], timeout: 1, inactivityTimeout: 1 }));
      const id = c.json().id;
      assert.equal((await put(id, content.subarray(0, 2 * MiB))).status, 200);
      await sleep(2500);
      assert.equal((await put(id, content.subarray(2 * MiB), 2 * MiB)).status, 403, 'expired meanwhile');
      assert.equal((await call(ctl, 'PATCH', `/tickets/${id}`, json({ timeout: 60 }))).status, 200);
      const st = (await call(ctl, 'GET', `/tickets/${id}`)).json();
      assert.equal(st.upload.resumeOffset, 2 * MiB, 'the staged bytes are still there');
      assert.equal((await put(id, content.subarray(2 * MiB), 2 * MiB)).status, 200);
      assert.equal((await patch(id, { op: 'finalize' })).status, 200);
      assert.equal(await sha256File(join(storage, 'paused.raw')), sha256(content));
    });
  });

  describe('NBD-backed tickets (qemu-nbd serving a qcow2)', () => {
    it('random I/O, zero, flush and extents on the guest view through the data API', async () => {
      const disk = join(dir, 'guest.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', disk, '32M');
      const nbd = await startQemuNbd(dir, disk, 'qcow2');
      try {
        const t = { uuid: randomUUID(), size: 32 * MiB, ops: ['read', 'write'], timeout: 300, url: nbd.url, sparse: true };
        assert.equal((await addTicket(t)).status, 200);
        const o = (await call(data, 'OPTIONS', `/images/${t.uuid}`)).json();
        assert.deepEqual([o.max_readers, o.max_writers], [8, 8]);
        assert.ok(o.features.includes('zero') && o.features.includes('extents'));
        const model = Buffer.alloc(32 * MiB);
        for (let i = 0; i < 12; i++) {
          const len = 1 + Math.floor(Math.random() * 2 * MiB);
          const at = Math.floor(Math.random() * (model.length - len));
          const chunk = randomBytes(len);
          chunk.copy(model, at);
          assert.equal((await put(t.uuid, chunk, at, '?flush=n')).status, 200);
        }
        assert.equal((await patch(t.uuid, { op: 'zero', offset: 16 * MiB, size: 8 * MiB, flush: true })).status, 200);
        model.fill(0, 16 * MiB, 24 * MiB);
        const got = await call(data, 'GET', `/images/${t.uuid}`);
        assert.equal(got.status, 200);
        assert.ok(got.data.equals(model), 'reads give the guest view');
        const ranged = await call(data, 'GET', `/images/${t.uuid}`, { headers: { range: `bytes=${MiB}-${3 * MiB - 1}` } });
        assert.ok(ranged.data.equals(model.subarray(MiB, 3 * MiB)));
        const ext = (await call(data, 'GET', `/images/${t.uuid}/extents`)).json() as Array<{ start: number; length: number; zero: boolean }>;
        assert.equal(ext.reduce((n, e) => n + e.length, 0), 32 * MiB);
        assert.ok(ext.some((e) => e.zero && e.start <= 16 * MiB && e.start + e.length >= 24 * MiB), JSON.stringify(ext));
        assert.equal((await call(data, 'GET', `/images/${t.uuid}/extents?context=dirty`)).status, 404);
        assert.equal((await patch(t.uuid, { op: 'flush' })).status, 200);
        assert.equal((await call(ctl, 'DELETE', `/tickets/${t.uuid}`)).status, 204);
        const out = join(dir, 'guest.out');
        qemuImg('convert', '-U', '-f', 'qcow2', '-O', 'raw', disk, out);
        assert.equal(await sha256File(out), sha256(model), 'the qcow2 holds the guest data');
      } finally {
        await nbd.stop();
      }
    });

    it('dirty extents from the export\'s dirty bitmap when the ticket says dirty', async () => {
      const disk = join(dir, 'inc.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', disk, '8M');
      qemuImg('bitmap', '--add', disk, 'b0');
      execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 3 1M 128k', disk], { stdio: 'ignore' });
      const nbd = await startQemuNbd(dir, disk, 'qcow2', ['--bitmap=b0', '--read-only']);
      try {
        const t = { uuid: randomUUID(), size: 8 * MiB, ops: ['read'], timeout: 300, url: nbd.url, dirty: true };
        await addTicket(t);
        const d = (await call(data, 'GET', `/images/${t.uuid}/extents?context=dirty`)).json();
        assert.deepEqual(d.filter((e: { dirty: boolean }) => e.dirty), [{ start: MiB, length: 128 * 1024, dirty: true, zero: false }]);
        const w = await put(t.uuid, Buffer.alloc(10), 0);
        assert.equal(w.status, 403, 'read-only ticket');
      } finally {
        await nbd.stop();
      }
    });

    it('DELETE answers 409 while a request cannot stop (hung NBD server), and succeeds when repeated later', async () => {
      await stop();
      await start({ removeTimeout: 1 });
      const disk = join(dir, 'hang.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', disk, '8M');
      const nbd = await startQemuNbd(dir, disk, 'qcow2');
      try {
        const t = { uuid: randomUUID(), size: 8 * MiB, ops: ['read'], timeout: 300, url: nbd.url };
        await addTicket(t);
        assert.equal((await call(data, 'GET', `/images/${t.uuid}/extents`)).status, 200, 'connected');
        process.kill(nbd.pid, 'SIGSTOP');
        const pending = call(data, 'GET', `/images/${t.uuid}/extents`).catch(() => undefined);
        await sleep(200);
        const first = await call(ctl, 'DELETE', `/tickets/${t.uuid}`);
        assert.equal(first.status, 409);
        assert.match(first.json().error, /still in use by 1 request/);
        assert.equal((await call(ctl, 'GET', `/tickets/${t.uuid}`)).json().canceled, true);
        process.kill(nbd.pid, 'SIGCONT');
        await pending;
        assert.equal((await call(ctl, 'DELETE', `/tickets/${t.uuid}`)).status, 204);
      } finally {
        process.kill(nbd.pid, 'SIGCONT');
        await nbd.stop();
      }
    });
  });
});
