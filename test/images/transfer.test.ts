import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { downloadImage, ImageEndpoint, uploadImage } from '@porthole/images';
import { makeTestPki } from '../bootiso/fixtures';
import { randomFile, sha256, sha256File, startRig, type Rig } from './helpers';

const MiB = 1024 * 1024;

describe('images: client transfers over https', function () {
  this.timeout(60_000);
  let rig: Rig;
  let ep: ImageEndpoint;
  before(async () => {
    const pkiDir = mkdtempSync(join(tmpdir(), 'porthole-images-pki-'));
    const pki = makeTestPki(pkiDir, 'transfer');
    rig = await startRig({ tls: { cert: pki.cert, key: pki.key } });
    assert.match(rig.server.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    ep = new ImageEndpoint(rig.server.url, { ca: readFileSync(pki.caFile), connections: 4 });
    rmSync(pkiDir, { recursive: true, force: true });
  });
  after(async () => {
    ep.close();
    await rig.close();
  });

  it('uploads and downloads with 4 parallel connections; sha256 matches at every step', async () => {
    const src = randomFile(rig.dir, 'par.raw', 13 * MiB + 5);
    const up = await rig.server.tickets.create({ image: 'par.raw', size: src.data.length, ops: ['write'] });
    let seen = 0;
    const r = await uploadImage(ep, up.id, src.path, { connections: 4, chunkSize: MiB, onProgress: (d) => (seen = Math.max(seen, d)) });
    assert.equal(r.sent, src.data.length);
    assert.equal(seen, src.data.length);
    assert.equal(r.status.state, 'finalized');
    assert.equal(await sha256File(join(rig.storage, 'par.raw')), sha256(src.data));
    const down = await rig.server.tickets.create({ image: 'par.raw', ops: ['read'] });
    const target = join(rig.dir, 'par.copy');
    const d = await downloadImage(ep, down.id, target, { connections: 4, chunkSize: MiB });
    assert.equal(d.size, src.data.length);
    assert.equal(await sha256File(target), sha256(src.data));
    assert.ok(!existsSync(`${target}.part`) && !existsSync(`${target}.part.json`));
  });

  it('resumes an upload: keeps what the server holds after checking it is the same file', async () => {
    const src = randomFile(rig.dir, 'res.raw', 6 * MiB);
    const t = await rig.server.tickets.create({ image: 'res.raw', size: src.data.length, ops: ['write'] });
    // An earlier run got the first 2 MiB and a range in the middle across.
    for (const [s, e] of [[0, 2 * MiB], [3 * MiB, 4 * MiB]]) {
      const res = await ep.request('PUT', `/images/${t.id}`, { body: src.data.subarray(s, e), headers: { 'content-length': e - s, 'content-range': `bytes ${s}-${e - 1}/${src.data.length}`, 'content-type': 'application/octet-stream' } });
      res.resume();
      assert.equal(res.statusCode, 200);
    }
    // A different file of the same size is caught by the spot check.
    const other = join(rig.dir, 'other.raw');
    writeFileSync(other, randomBytes(src.data.length));
    await assert.rejects(uploadImage(ep, t.id, other, { resume: true }), /cannot resume: bytes .* differ .*not the file uploaded before/);
    const r = await uploadImage(ep, t.id, src.path, { resume: true, chunkSize: MiB });
    assert.equal(r.sent, 3 * MiB, 'only the missing ranges were sent');
    assert.equal(await sha256File(join(rig.storage, 'res.raw')), sha256(src.data));
  });

  it('resumes a cut download from its state file; zero extents are not fetched', async () => {
    const path = join(rig.storage, 'sp.raw');
    const data = Buffer.alloc(24 * MiB);
    randomBytes(8 * MiB).copy(data, 0);
    randomBytes(4 * MiB).copy(data, 16 * MiB);
    writeFileSync(path, data);
    await promisify(execFile)('fallocate', ['--dig-holes', path]);
    const t1 = await rig.server.tickets.create({ image: 'sp.raw', ops: ['read'] });
    const target = join(rig.dir, 'sp.copy');
    let revoked = false;
    await assert.rejects(downloadImage(ep, t1.id, target, {
      connections: 1, chunkSize: MiB, attempts: 1,
      onProgress: (done) => {
        if (!revoked && done >= 17 * MiB) {
          revoked = true;
          void rig.server.tickets.revoke(t1.id);
        }
      },
    }));
    assert.ok(!existsSync(target), 'no partial file at the target path');
    const state = JSON.parse(readFileSync(`${target}.part.json`, 'utf8')) as { done: Array<[number, number]> };
    const had = state.done.reduce((n, [s, e]) => n + e - s, 0);
    assert.ok(had >= 12 * MiB && had < 24 * MiB, `state covers ${had}`);
    const t2 = await rig.server.tickets.create({ image: 'sp.raw', ops: ['read'] });
    const d = await downloadImage(ep, t2.id, target, { resume: true, chunkSize: MiB });
    assert.ok(d.fetched < 12 * MiB, `fetched ${d.fetched} bytes on resume`);
    assert.equal(await sha256File(target), sha256(data));
    assert.ok(statSync(target).blocks * 512 < 16 * MiB, 'the copy stayed sparse');
    assert.deepEqual(readdirSync(rig.dir).filter((f) => f.startsWith('sp.copy.')), []);
  });
});
