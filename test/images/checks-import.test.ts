import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as https from 'node:https';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { uploadImage, type TicketInfo, type TicketStatus } from '@porthole/images';
import { makeTestIso, makeTestPki, type TestCert } from '../bootiso/fixtures';
import { randomFile, sha256, sha256File, startRig, type Rig } from './helpers';

const MiB = 1024 * 1024;
const qemuImg = (args: string[], cwd: string) => execFileSync('qemu-img', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });

describe('images: format checks after upload', function () {
  this.timeout(30_000);
  let rig: Rig;
  before(async () => {
    rig = await startRig();
  });
  after(async () => rig.close());

  /** Uploads a local file as a new image; returns the finalize outcome (status or the refusal message). */
  async function upload(file: string, name: string, extra: object = {}): Promise<TicketInfo | string> {
    const t = await rig.server.tickets.create({ image: name, size: statSync(file).size, ops: ['write'], ...extra });
    try {
      return (await uploadImage(rig.ep, t.id, file)).status;
    } catch (err) {
      return (err as Error).message;
    }
  }
  const published = () => readdirSync(rig.storage).filter((f) => !f.startsWith('.'));
  const hidden = () => readdirSync(rig.storage).filter((f) => f.startsWith('.'));

  it('accepts a plain qcow2 and reports its virtual size', async () => {
    qemuImg(['create', '-q', '-f', 'qcow2', 'plain.qcow2', '64M'], rig.dir);
    const st = await upload(join(rig.dir, 'plain.qcow2'), 'plain.qcow2') as TicketInfo;
    assert.equal(st.check?.format, 'qcow2');
    assert.equal(st.check?.virtualSize, 64 * MiB);
    assert.ok(published().includes('plain.qcow2'));
  });

  it('refuses a qcow2 with a backing file; nothing usable is left', async () => {
    qemuImg(['create', '-q', '-f', 'raw', 'base.raw', '16M'], rig.dir);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', join(rig.dir, 'base.raw'), '-F', 'raw', 'overlay.qcow2'], rig.dir);
    const r = await upload(join(rig.dir, 'overlay.qcow2'), 'overlay.qcow2');
    assert.match(String(r), /422 image refused: qcow2 image has a backing file/);
    assert.ok(!published().includes('overlay.qcow2'));
    assert.deepEqual(hidden(), [], 'staging file removed');
  });

  it('refuses a qcow2 with an external data file', async () => {
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${join(rig.dir, 'data.bin')}`, 'ext.qcow2', '16M'], rig.dir);
    const r = await upload(join(rig.dir, 'ext.qcow2'), 'ext.qcow2');
    assert.match(String(r), /image refused: qcow2 image has an external data file/);
    assert.ok(!published().includes('ext.qcow2'));
  });

  it('refuses vmdk (it can name other host files) and a raw image over the size limit', async () => {
    qemuImg(['create', '-q', '-f', 'vmdk', 'd.vmdk', '16M'], rig.dir);
    assert.match(String(await upload(join(rig.dir, 'd.vmdk'), 'd.vmdk')), /vmdk images are not accepted/);
    const big = randomFile(rig.dir, 'big.raw', 2 * MiB);
    assert.match(String(await upload(big.path, 'big.raw', { maxVirtualSize: MiB })), /virtual size 2097152 exceeds the target's 1048576 bytes/);
    assert.match(String(await upload(big.path, 'big2.raw', { format: 'qcow2' })), /expected a qcow2 image, found raw/);
    assert.deepEqual(published().filter((f) => /vmdk|big/.test(f)), []);
  });

  it('refuses a qcow2 uploaded in place over an existing image by moving it out of the way', async () => {
    qemuImg(['create', '-q', '-f', 'raw', 'b2.raw', '1M'], rig.dir);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', join(rig.dir, 'b2.raw'), '-F', 'raw', 'evil.qcow2', '1M'], rig.dir);
    const evil = readFileSync(join(rig.dir, 'evil.qcow2'));
    writeFileSync(join(rig.storage, 'inplace.raw'), Buffer.alloc(evil.length));
    const t = await rig.server.tickets.create({ image: 'inplace.raw', ops: ['write'] });
    const res = await rig.ep.request('PUT', `/images/${t.id}`, { body: evil, headers: { 'content-type': 'application/octet-stream', 'content-length': evil.length } });
    res.resume();
    const fin = await rig.ep.json('PATCH', `/images/${t.id}`, { op: 'finalize' }).catch((e: Error) => e.message);
    assert.match(String(fin), /qcow2 image has a backing file/);
    assert.equal(existsSync(join(rig.storage, 'inplace.raw')), false);
    assert.ok(existsSync(join(rig.storage, '.inplace.raw.refused')));
  });

  it('recognises an ISO 9660 image', async () => {
    const iso = makeTestIso(rig.dir, 'IMG_TEST', 'x.iso');
    const st = await upload(iso, 'x.iso') as TicketInfo;
    assert.deepEqual([st.check?.format, st.check?.content], ['raw', 'iso9660']);
  });
});

describe('images: import from an https URL', function () {
  this.timeout(30_000);
  let rig: Rig;
  let pki: TestCert;
  let server: https.Server;
  let url: string;
  let source: Buffer;
  let cuts = 0;
  const seen: string[] = [];

  before(async () => {
    rig = await startRig();
    pki = makeTestPki(rig.dir, 'import');
    source = randomFile(rig.dir, 'src.raw', 6 * MiB).data;
    // A Range-capable https server that cuts its first full response after 2 MiB.
    server = https.createServer({ cert: pki.cert, key: pki.key }, (req, res) => {
      seen.push(String(req.headers.range ?? 'full'));
      if (req.url === '/missing.img') return void res.writeHead(404).end();
      const m = /^bytes=(\d+)-$/.exec(String(req.headers.range ?? ''));
      const start = m ? Number(m[1]) : 0;
      const headers: Record<string, string | number> = { 'content-length': source.length - start, etag: '"v1"', 'accept-ranges': 'bytes' };
      if (m) headers['content-range'] = `bytes ${start}-${source.length - 1}/${source.length}`;
      res.writeHead(m ? 206 : 200, headers);
      if (!m && cuts++ === 0) {
        res.write(source.subarray(0, 2 * MiB), () => setTimeout(() => res.destroy(), 50));
        return;
      }
      res.end(source.subarray(start));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `https://127.0.0.1:${(server.address() as { port: number }).port}`;
  });
  after(async () => {
    server.closeAllConnections();
    server.close();
    await rig.close();
  });

  async function finished(id: string): Promise<TicketStatus> {
    for (;;) {
      const st = rig.server.tickets.status(id);
      if (st.import?.state !== 'running') return st;
      await sleep(50);
    }
  }

  it('downloads into a new image, resuming with Range after a cut, with progress in the status', async () => {
    const st0 = await rig.server.importUrl({ url: `${url}/disk.img?sig=secret`, image: 'imported.raw', ca: readFileSync(pki.caFile, 'utf8') });
    assert.equal(st0.import?.url, `${url}/disk.img`, 'query strings (credentials) are not shown');
    assert.equal(st0.import?.total, source.length);
    const st = await finished(st0.id);
    assert.equal(st.import?.state, 'done', JSON.stringify(st.import));
    assert.ok(st.import!.attempts >= 2, 'the cut was resumed');
    assert.ok(seen.some((r) => /^bytes=\d+-$/.test(r) && r !== 'bytes=0-'), `a Range request resumed it: ${seen.join(', ')}`);
    assert.equal(st.check?.format, 'raw');
    assert.equal(await sha256File(join(rig.storage, 'imported.raw')), sha256(source));
    // The import ticket can read the image (to serve an ISO to boot-iso, for instance).
    const r = await rig.ep.request('GET', `/images/${st0.id}`, { headers: { range: 'bytes=0-99' } });
    assert.equal(r.statusCode, 206);
    r.resume();
  });

  it('refuses http URLs, an untrusted certificate and a 404, leaving nothing behind', async () => {
    await assert.rejects(rig.server.importUrl({ url: 'http://127.0.0.1/x', image: 'h.raw' }), /only https URLs can be imported/);
    await assert.rejects(rig.server.importUrl({ url: `${url}/disk.img`, image: 'u.raw' }), /import from .* failed: .*(self-signed|certificate)/);
    await assert.rejects(rig.server.importUrl({ url: `${url}/missing.img`, image: 'm.raw', ca: readFileSync(pki.caFile, 'utf8') }), /the server answered 404/);
    assert.deepEqual(readdirSync(rig.storage).filter((f) => f !== 'imported.raw'), []);
  });
});
