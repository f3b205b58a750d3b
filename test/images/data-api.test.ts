import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync, statSync, writeFileSync, writeSync } from 'node:fs';
import * as http from 'node:http';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ImageService, type TicketStatus } from '@porthole/images';
import { call, randomFile, sha256, sha256File, startRig, type Rig } from './helpers';

const MiB = 1024 * 1024;

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

describe('images: data API', function () {
  this.timeout(30_000);
  let rig: Rig;
  beforeEach(async () => {
    rig = await startRig();
  });
  afterEach(async () => rig.close());

  const put = (ticket: string, data: Buffer, range?: [number, number]) =>
    call(rig.ep, 'PUT', `/images/${ticket}`, { body: data, headers: { 'content-type': 'application/octet-stream', 'content-length': data.length, ...(range ? { 'content-range': `bytes ${range[0]}-${range[0] + data.length - 1}/${range[1]}` } : {}) } });
  const patch = (ticket: string, op: object) => call(rig.ep, 'PATCH', `/images/${ticket}`, { body: JSON.stringify(op), headers: { 'content-type': 'application/json' } });
  const get = (ticket: string, range?: string) => call(rig.ep, 'GET', `/images/${ticket}`, range ? { headers: { range } } : {});
  /** An existing raw image with known content, and a ticket for it. */
  async function existing(name: string, data: Buffer, ops: Array<'read' | 'write'>, extra: object = {}): Promise<TicketStatus> {
    writeFileSync(join(rig.storage, name), data);
    return rig.server.tickets.create({ image: name, ops, ...extra });
  }

  it('uploads a whole image, publishes it only after finalize, and downloads the same bytes', async () => {
    const data = randomBytes(3 * MiB + 17);
    const t = await rig.server.tickets.create({ image: 'disk.raw', size: data.length, ops: ['read', 'write'] });
    assert.equal((await put(t.id, data)).status, 200);
    assert.equal(existsSync(join(rig.storage, 'disk.raw')), false, 'not visible under its name before the check');
    const fin = await patch(t.id, { op: 'finalize' });
    assert.equal(fin.status, 200, fin.data.toString());
    assert.equal(fin.json().check.format, 'raw');
    assert.equal(await sha256File(join(rig.storage, 'disk.raw')), sha256(data));
    assert.deepEqual(readdirSync(rig.storage), ['disk.raw'], 'no staging file left');
    const got = await get(t.id);
    assert.equal(got.status, 200);
    assert.equal(got.headers['accept-ranges'], 'bytes');
    assert.equal(sha256(got.data), sha256(data));
    const st = rig.server.tickets.status(t.id);
    assert.equal(st.bytes.written, data.length);
    assert.equal(st.bytes.read, data.length);
    assert.equal(st.state, 'finalized');
    assert.equal((await put(t.id, Buffer.from('x'), [0, data.length])).status, 409, 'writes closed after finalize');
  });

  it('ranged upload out of order and ranged reads (206, Content-Range, suffix ranges)', async () => {
    const data = randomBytes(2 * MiB);
    const t = await rig.server.tickets.create({ image: 'r.raw', size: data.length, ops: ['read', 'write'] });
    const cut = [0, 300_000, 1_000_000, 1_500_001, data.length];
    for (const i of [3, 1, 0, 2]) assert.equal((await put(t.id, data.subarray(cut[i], cut[i + 1]), [cut[i], data.length])).status, 200);
    const early = await patch(t.id, { op: 'finalize' });
    assert.equal(early.status, 200);
    const r = await get(t.id, 'bytes=1000-200999');
    assert.equal(r.status, 206);
    assert.equal(r.headers['content-range'], `bytes 1000-200999/${data.length}`);
    assert.ok(r.data.equals(data.subarray(1000, 201000)));
    const tail = await get(t.id, 'bytes=-100');
    assert.ok(tail.data.equals(data.subarray(data.length - 100)));
    const open = await get(t.id, `bytes=${data.length - 5}-`);
    assert.ok(open.data.equals(data.subarray(data.length - 5)));
    const head = await call(rig.ep, 'HEAD', `/images/${t.id}`);
    assert.equal(head.headers['content-length'], String(data.length));
  });

  it('refuses to finalize an incomplete upload and names where to resume', async () => {
    const t = await rig.server.tickets.create({ image: 'half.raw', size: 2 * MiB, ops: ['write'] });
    await put(t.id, randomBytes(MiB), [0, 2 * MiB]);
    const fin = await patch(t.id, { op: 'finalize' });
    assert.equal(fin.status, 409);
    assert.match(fin.json().error, /upload incomplete: 1048576 bytes not written yet .*resume at byte 1048576/);
    assert.equal(existsSync(join(rig.storage, 'half.raw')), false);
  });

  it('resumes after the connection is cut mid-upload; what lands equals what was sent', async () => {
    const data = randomBytes(8 * MiB);
    const t = await rig.server.tickets.create({ image: 'cut.raw', size: data.length, ops: ['read', 'write'] });
    const url = new URL(rig.server.url);
    const req = http.request({ host: url.hostname, port: url.port, method: 'PUT', path: `/images/${t.id}`, headers: { 'content-length': data.length, 'content-type': 'application/octet-stream' } });
    req.on('error', () => undefined);
    req.write(data.subarray(0, 3 * MiB));
    await until('3 MiB on the server', () => rig.server.tickets.status(t.id).bytes.written >= 3 * MiB);
    req.destroy();
    await until('the cut request to end', () => !rig.server.tickets.status(t.id).active);
    const st = rig.server.tickets.status(t.id);
    assert.equal(st.upload.resumeOffset, 3 * MiB);
    assert.equal(st.state, 'active');
    const rest = data.subarray(st.upload.resumeOffset);
    assert.equal((await put(t.id, rest, [st.upload.resumeOffset, data.length])).status, 200);
    assert.equal((await patch(t.id, { op: 'finalize' })).status, 200);
    assert.equal(await sha256File(join(rig.storage, 'cut.raw')), sha256(data));
  });

  it('random writes land in place on an existing image', async () => {
    const model = randomBytes(4 * MiB);
    const t = await existing('rw.raw', Buffer.from(model), ['read', 'write']);
    assert.equal(t.mode, 'existing');
    for (let i = 0; i < 20; i++) {
      const len = 1 + Math.floor(Math.random() * 100_000);
      const at = Math.floor(Math.random() * (model.length - len));
      const chunk = randomBytes(len);
      chunk.copy(model, at);
      assert.equal((await put(t.id, chunk, [at, model.length])).status, 200);
    }
    assert.equal((await patch(t.id, { op: 'flush' })).status, 200);
    assert.equal(await sha256File(join(rig.storage, 'rw.raw')), sha256(model));
    assert.equal(sha256((await get(t.id)).data), sha256(model));
  });

  it('zero makes a range read as zeros and shows up in the extents', async () => {
    const data = randomBytes(4 * MiB);
    const t = await existing('z.raw', data, ['read', 'write']);
    assert.equal((await patch(t.id, { op: 'zero', offset: MiB, size: 2 * MiB, flush: true })).status, 200);
    const r = await get(t.id, `bytes=${MiB - 10}-${3 * MiB + 9}`);
    assert.ok(r.data.subarray(0, 10).equals(data.subarray(MiB - 10, MiB)));
    assert.ok(r.data.subarray(10, 10 + 2 * MiB).equals(Buffer.alloc(2 * MiB)));
    assert.ok(r.data.subarray(10 + 2 * MiB).equals(data.subarray(3 * MiB, 3 * MiB + 10)));
    const ext = (await call(rig.ep, 'GET', `/images/${t.id}/extents`)).json();
    // imageio: a raw file has no holes (hole is for qcow2 chains), only zero extents.
    assert.deepEqual(ext, [
      { start: 0, length: MiB, zero: false, hole: false },
      { start: MiB, length: 2 * MiB, zero: true, hole: false },
      { start: 3 * MiB, length: MiB, zero: false, hole: false },
    ]);
    const past = await patch(t.id, { op: 'zero', offset: 3 * MiB, size: 2 * MiB });
    assert.equal(past.status, 416);
  });

  it('extents of a sparse image tell data from zeros', async () => {
    const path = join(rig.storage, 'sparse.raw');
    execFileSync('truncate', ['-s', String(64 * MiB), path]);
    const fd = openSync(path, 'r+');
    writeSync(fd, randomBytes(MiB), 0, MiB, 8 * MiB);
    writeSync(fd, randomBytes(MiB), 0, MiB, 63 * MiB);
    closeSync(fd);
    const t = await rig.server.tickets.create({ image: 'sparse.raw', ops: ['read'] });
    const ext = (await call(rig.ep, 'GET', `/images/${t.id}/extents`)).json() as Array<{ start: number; length: number; zero: boolean }>;
    const data = ext.filter((e) => !e.zero).map((e) => [e.start, e.start + e.length]);
    assert.deepEqual(data, [[8 * MiB, 9 * MiB], [63 * MiB, 64 * MiB]]);
    assert.equal(ext.reduce((n, e) => n + e.length, 0), 64 * MiB);
  });

  it('OPTIONS tells what the server and a ticket allow', async () => {
    const all = await call(rig.ep, 'OPTIONS', '/images/*');
    assert.equal(all.status, 200);
    assert.equal(all.headers.allow, 'OPTIONS,GET,PUT,PATCH');
    assert.deepEqual(all.json().features, ['checksum', 'extents', 'flush', 'zero', 'finalize', 'cancel']);
    const t = await existing('o.raw', randomBytes(1024), ['read']);
    const ro = await call(rig.ep, 'OPTIONS', `/images/${t.id}`);
    assert.equal(ro.headers.allow, 'OPTIONS,GET,HEAD');
    assert.deepEqual(ro.json(), { features: ['checksum', 'extents'], max_readers: 8, max_writers: 8 });
    assert.equal((await call(rig.ep, 'OPTIONS', '/images/nope')).status, 403);
  });

  describe('refusals leave the image untouched', () => {
    let data: Buffer;
    let path: string;
    let before: { sha: string; mtime: number };
    beforeEach(async () => {
      data = randomBytes(MiB);
      path = join(rig.storage, 'keep.raw');
      writeFileSync(path, data);
      before = { sha: await sha256File(path), mtime: statSync(path).mtimeMs };
    });
    afterEach(async () => {
      assert.equal(await sha256File(path), before.sha);
      assert.equal(statSync(path).mtimeMs, before.mtime);
    });
    const evil = Buffer.alloc(4096, 0xee);

    it('no ticket, wrong ticket: 403', async () => {
      const none = await call(rig.ep, 'PUT', '/images/', { body: evil, headers: { 'content-type': 'application/octet-stream' } });
      assert.equal(none.status, 403);
      assert.match(none.json().error, /no ticket given/);
      const wrong = await put(randomBytes(24).toString('base64url'), evil, [0, data.length]);
      assert.equal(wrong.status, 403);
      assert.equal(wrong.json().error, 'no such ticket');
      assert.equal((await get('x')).status, 403);
    });

    it('expired ticket: 403 naming the expiry; the owner can extend it again (imageio PATCH)', async () => {
      const t = await rig.server.tickets.create({ image: 'keep.raw', ops: ['read', 'write'], timeout: 1 });
      await sleep(1100);
      const r = await put(t.id, evil, [0, data.length]);
      assert.equal(r.status, 403);
      assert.match(r.json().error, /ticket expired at /);
      assert.equal((await get(t.id)).status, 403);
      assert.equal(rig.server.tickets.status(t.id).expired, true);
      rig.server.tickets.extend(t.id, 100);
      assert.equal((await get(t.id, 'bytes=0-9')).status, 206);
    });

    it('the timeout slides: every request renews it (imageio)', async () => {
      const t = await rig.server.tickets.create({ image: 'keep.raw', ops: ['read'], timeout: 2 });
      for (let i = 0; i < 5; i++) {
        await sleep(700);
        assert.equal((await get(t.id, 'bytes=0-9')).status, 206, `request ${i} at ${(i + 1) * 0.7} s`);
      }
      await sleep(2100);
      assert.equal((await get(t.id, 'bytes=0-9')).status, 403);
    });

    it('deleted ticket: 403 ticket deleted', async () => {
      const t = await rig.server.tickets.create({ image: 'keep.raw', ops: ['read', 'write'] });
      assert.equal((await rig.server.tickets.revoke(t.id))?.state, 'deleted');
      const r = await put(t.id, evil, [0, data.length]);
      assert.equal(r.status, 403);
      assert.equal(r.json().error, 'ticket deleted');
    });

    it('write on a read-only ticket: 403', async () => {
      const t = await rig.server.tickets.create({ image: 'keep.raw', ops: ['read'] });
      const r = await put(t.id, evil, [0, data.length]);
      assert.equal(r.status, 403);
      assert.equal(r.json().error, 'ticket does not allow write');
      assert.equal((await patch(t.id, { op: 'zero', offset: 0, size: 100 })).status, 403);
      assert.equal((await call(rig.ep, 'DELETE', `/images/${t.id}`)).status, 403);
    });

    it('range past the end: 416 with Content-Range bytes */size', async () => {
      const t = await rig.server.tickets.create({ image: 'keep.raw', ops: ['read', 'write'] });
      const w = await put(t.id, evil, [data.length - 100, data.length]);
      assert.equal(w.status, 416);
      assert.equal(w.headers['content-range'], `bytes */${data.length}`);
      const whole = await put(t.id, Buffer.alloc(data.length + 1));
      assert.equal(whole.status, 416);
      const r = await get(t.id, `bytes=${data.length}-`);
      assert.equal(r.status, 416);
      assert.equal(r.headers['content-range'], `bytes */${data.length}`);
      assert.equal((await get(t.id, 'bytes=0-1,5-6')).status, 416, 'several ranges: 416 (imageio)');
      assert.equal((await get(t.id, `bytes=0-${data.length}`)).status, 416, 'a last byte past the end: 416 (imageio)');
    });
  });

  it('DELETE cancels a download in progress and waits until it has stopped', async () => {
    const path = join(rig.storage, 'big.raw');
    execFileSync('truncate', ['-s', String(512 * MiB), path]);
    const t = await rig.server.tickets.create({ image: 'big.raw', ops: ['read'] });
    const url = new URL(rig.server.url);
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => http.get({ host: url.hostname, port: url.port, path: `/images/${t.id}` }, resolve).on('error', reject));
    res.pause(); // a slow reader: the server stays mid-response
    await until('a request in progress', () => rig.server.tickets.status(t.id).active);
    assert.equal(rig.server.tickets.status(t.id).connections, 1);
    const ended = new Promise<string>((resolve) => {
      res.on('error', (e) => resolve(`error ${e.message}`));
      res.on('close', () => resolve('closed'));
    });
    const final = await rig.server.tickets.revoke(t.id);
    assert.equal(final?.active, false, 'nothing in progress once DELETE returns');
    res.resume();
    assert.match(await ended, /aborted|closed|error/);
    assert.ok(final!.bytes.read < 512 * MiB, 'the download was cut, not completed');
  });

  it('cancel discards a staged upload', async () => {
    const t = await rig.server.tickets.create({ image: 'c.raw', size: MiB, ops: ['write'] });
    await put(t.id, randomBytes(1000), [0, MiB]);
    assert.equal(readdirSync(rig.storage).length, 1);
    const r = await call(rig.ep, 'DELETE', `/images/${t.id}`);
    assert.equal(r.json().state, 'cancelled');
    assert.deepEqual(readdirSync(rig.storage), []);
    assert.equal((await put(t.id, Buffer.from('x'), [0, MiB])).status, 403);
  });

  it('a restarted service removes staging files of tickets that are gone, and nothing else', async () => {
    writeFileSync(join(rig.storage, '.old.raw.abcdef.upload'), 'stale');
    writeFileSync(join(rig.storage, 'keep.raw'), 'image');
    const svc = new ImageService({ storageDir: rig.storage });
    svc.close();
    assert.deepEqual(readdirSync(rig.storage), ['keep.raw']);
  });

  it('a PUT of text/plain or JSON content is stored as bytes, not parsed', async () => {
    const t = await rig.server.tickets.create({ image: 'txt.raw', size: 12, ops: ['read', 'write'] });
    await call(rig.ep, 'PUT', `/images/${t.id}`, { body: '{"op":"zero"}'.slice(0, 12), headers: { 'content-type': 'application/json' } });
    assert.equal((await get(t.id)).data.toString(), '{"op":"zero"');
  });
});
