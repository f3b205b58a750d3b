import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdBackend } from '@porthole/images/backends';
import { ALLOCATION_DEPTH, BASE_ALLOCATION, NbdClient, NbdError, parseNbdUrl, STATE_ZERO } from '@porthole/images/nbd';
import { startQemuNbd, type QemuNbd } from './helpers';

const MiB = 1024 * 1024;
const qemuImg = (...args: string[]) => execFileSync('qemu-img', args, { stdio: ['ignore', 'ignore', 'pipe'] });

describe('images: NBD client against a real qemu-nbd serving a qcow2', function () {
  this.timeout(30_000);
  let dir: string;
  let disk: string;
  let nbd: QemuNbd;
  let client: NbdClient;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-nbd-'));
    disk = join(dir, 'disk.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', disk, '64M');
    nbd = await startQemuNbd(dir, disk, 'qcow2');
    const { address, exportName } = parseNbdUrl(nbd.url);
    client = await NbdClient.connect(address, exportName);
  });
  after(async () => {
    await client?.close();
    await nbd?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('parses the NBD URL forms qemu and imageio use', () => {
    assert.deepEqual(parseNbdUrl('nbd:unix:/run/vdsm/nbd/x.sock:exportname=sda'), { address: { kind: 'unix', path: '/run/vdsm/nbd/x.sock' }, exportName: 'sda' });
    assert.deepEqual(parseNbdUrl('nbd:unix:/tmp/s'), { address: { kind: 'unix', path: '/tmp/s' }, exportName: '' });
    assert.deepEqual(parseNbdUrl('nbd:localhost:10809:exportname=a'), { address: { kind: 'tcp', host: 'localhost', port: 10809 }, exportName: 'a' });
    assert.deepEqual(parseNbdUrl('nbd://127.0.0.1:10810/b'), { address: { kind: 'tcp', host: '127.0.0.1', port: 10810 }, exportName: 'b' });
    assert.deepEqual(parseNbdUrl('nbd+unix:///c?socket=/tmp/s'), { address: { kind: 'unix', path: '/tmp/s' }, exportName: 'c' });
    assert.throws(() => parseNbdUrl('file:///etc/passwd'), /not an NBD URL/);
  });

  it('negotiates structured replies, the guest-visible size and the metadata contexts', () => {
    assert.equal(client.size, 64 * MiB, 'the virtual size of the qcow2, not its file size');
    assert.equal(client.structured, true);
    assert.equal(client.readOnly, false);
    assert.ok(client.canFlush && client.canWriteZeroes);
    assert.ok(client.hasContext(BASE_ALLOCATION) && client.hasContext(ALLOCATION_DEPTH));
  });

  it('writes and reads back at random offsets with many requests in flight, and the qcow2 holds the guest data', async () => {
    const model = Buffer.alloc(64 * MiB);
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 40; i++) {
      const len = 1 + Math.floor(Math.random() * 300_000);
      const at = Math.floor(Math.random() * (model.length - len));
      const data = randomBytes(len);
      data.copy(model, at);
      // Overlapping writes in flight at once would race: wait for each, but keep reads concurrent below.
      writes.push(client.write(at, data));
      await writes[writes.length - 1];
    }
    await client.flush();
    const pieces = await Promise.all(Array.from({ length: 16 }, (_, i) => client.read(i * 4 * MiB, 4 * MiB)));
    assert.ok(Buffer.concat(pieces).equals(model));
    // What qemu itself reads from the qcow2 (the guest view) is what went in.
    const out = join(dir, 'check.raw');
    qemuImg('convert', '-U', '-f', 'qcow2', '-O', 'raw', disk, out);
    assert.ok(execFileSync('cmp', [out, '-'], { input: model }).length === 0);
  });

  it('write zeroes and block status: zeroed ranges read as zeros and show as zero extents', async () => {
    await client.write(8 * MiB, randomBytes(2 * MiB));
    await client.zero(8 * MiB + 512 * 1024, MiB, false);
    const got = await client.read(8 * MiB, 2 * MiB);
    assert.ok(got.subarray(512 * 1024, 512 * 1024 + MiB).equals(Buffer.alloc(MiB)));
    assert.ok(!got.subarray(0, 512 * 1024).equals(Buffer.alloc(512 * 1024)));
    const status = await client.blockStatus(8 * MiB, 2 * MiB);
    const base = status.get(BASE_ALLOCATION)!;
    let pos = 8 * MiB;
    const zeroAt: number[] = [];
    for (const e of base) {
      if (e.flags & STATE_ZERO) zeroAt.push(pos);
      pos += e.length;
    }
    assert.ok(zeroAt.includes(8 * MiB + 512 * 1024), JSON.stringify(base));
  });

  it('a request past the end and an unknown export are refused with the cause', async () => {
    await assert.rejects(client.read(64 * MiB - 10, 20), (e: NbdError) => e.code === 'EINVAL' && /past the end of the export/.test(e.message));
    await assert.rejects(NbdClient.connect(parseNbdUrl(nbd.url).address, 'nope'), (e: NbdError) => e.code === 'ENOENT' && /no export named "nope"/.test(e.message));
  });

  it('extents of the guest view: data, zero and holes (qcow2 clusters allocated nowhere)', async () => {
    const d2 = join(dir, 'ext.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', d2, '32M');
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 7 4M 1M', '-c', 'write -z 20M 1M', d2], { stdio: 'ignore' });
    const srv = await startQemuNbd(dir, d2, 'qcow2');
    const be = new NbdBackend(parseNbdUrl(srv.url).address, 'disk', false, 8);
    try {
      const ext = await be.extents('zero');
      assert.deepEqual(ext, [
        { start: 0, length: 4 * MiB, zero: true, hole: true },
        { start: 4 * MiB, length: MiB, zero: false, hole: false },
        { start: 5 * MiB, length: 15 * MiB, zero: true, hole: true },
        { start: 20 * MiB, length: MiB, zero: true, hole: false },
        { start: 21 * MiB, length: 11 * MiB, zero: true, hole: true },
      ]);
      await assert.rejects(be.extents('dirty'), /has no dirty bitmap/);
    } finally {
      await be.close();
      await srv.stop();
    }
  });

  it('dirty extents from a qemu dirty bitmap (qemu:dirty-bitmap:NAME)', async () => {
    const d3 = join(dir, 'bm.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', d3, '16M');
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 1M', d3], { stdio: 'ignore' });
    qemuImg('bitmap', '--add', d3, 'b0');
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 2 2M 64k', '-c', 'write -z 8M 1M', d3], { stdio: 'ignore' });
    const srv = await startQemuNbd(dir, d3, 'qcow2', ['--bitmap=b0', '--read-only']);
    const be = new NbdBackend(parseNbdUrl(srv.url).address, 'disk', true, 8);
    try {
      const dirty = await be.extents('dirty');
      assert.deepEqual(dirty.filter((e) => (e as { dirty: boolean }).dirty), [
        { start: 2 * MiB, length: 64 * 1024, dirty: true, zero: false },
        { start: 8 * MiB, length: MiB, dirty: true, zero: true },
      ]);
      assert.equal(dirty.reduce((n, e) => n + e.length, 0), 16 * MiB);
      // A read-only export refuses writes.
      await assert.rejects(be.write(0, (await import('node:stream')).Readable.from([Buffer.alloc(512)]), new AbortController().signal, () => undefined), /read-only/);
    } finally {
      await be.close();
      await srv.stop();
    }
  });
});
