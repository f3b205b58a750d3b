import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import { join } from 'node:path';
import {
  buildFloppyPayload,
  buildIsoPayload,
  BlockInfo,
  connectQmpSocket,
  ejectPayloadMedium,
  findPayloadDrive,
  insertPayloadMedium,
  QmpConnection,
  qemuPayloadArgs,
} from '@porthole/media';
import { QemuVm, startQemu, tempDir } from './util';

const spec = (name: string) => ({ id: name, entries: [{ guestPath: `/etc/${name}`, content: { base64: Buffer.from(name).toString('base64') } }] });

async function drive(qmp: QmpConnection, device: string): Promise<BlockInfo> {
  const blocks = (await qmp.execute('query-block')) as BlockInfo[];
  const b = blocks.find((x) => x.device === device);
  assert.ok(b, `drive ${device} in query-block`);
  return b;
}

describe('media: payloads on a running QEMU over QMP', function () {
  this.timeout(60_000);
  let t: ReturnType<typeof tempDir>;
  let vm: QemuVm;
  let qmp: QmpConnection;
  let iso1: string;
  let iso2: string;
  let floppy1: string;
  let floppy2: string;

  before(async () => {
    t = tempDir();
    iso1 = join(t.dir, 'one.iso');
    iso2 = join(t.dir, 'two.iso');
    floppy1 = join(t.dir, 'one.img');
    floppy2 = join(t.dir, 'two.img');
    await buildIsoPayload(spec('one'), iso1);
    await buildIsoPayload(spec('two'), iso2);
    await buildFloppyPayload(spec('one'), floppy1);
    await buildFloppyPayload(spec('two'), floppy2);
    // An empty CD-ROM drive as a VM definition would have it, plus a floppy attached with qemuPayloadArgs.
    vm = await startQemu(t.dir, ['-drive', 'if=none,id=cd0,media=cdrom', '-device', 'ide-cd,drive=cd0', ...qemuPayloadArgs(floppy1, 'floppy')]);
    qmp = await connectQmpSocket(vm.qmpSocket);
  });

  after(async () => {
    qmp?.close();
    await vm?.stop();
    t.cleanup();
  });

  it('inserts an ISO into the empty CD-ROM drive read-only, and query-block shows it', async () => {
    assert.equal((await drive(qmp, 'cd0')).inserted, undefined);
    const b = await insertPayloadMedium(qmp, iso1, { medium: 'cd' });
    assert.equal(b.device, 'cd0');
    const now = await drive(qmp, 'cd0');
    assert.equal(now.inserted?.file, iso1);
    assert.equal(now.inserted?.ro, true);
    assert.equal(now.tray_open, false);
  });

  it('does not replace a medium in an unnamed drive unless the drive is named', async () => {
    await assert.rejects(insertPayloadMedium(qmp, iso2, { medium: 'cd' }), /no empty CD-ROM drive .*cd0\(cd, holds a medium\)/);
    await insertPayloadMedium(qmp, iso2, { medium: 'cd', device: 'cd0' });
    assert.equal((await drive(qmp, 'cd0')).inserted?.file, iso2);
  });

  it('ejects the CD, and query-block shows the drive empty', async () => {
    const b = await ejectPayloadMedium(qmp, { medium: 'cd' });
    assert.equal(b.device, 'cd0');
    assert.equal((await drive(qmp, 'cd0')).inserted, undefined);
  });

  it('finds the floppy attached with qemuPayloadArgs, ejects it and inserts another', async () => {
    const f = await drive(qmp, 'porthole-payload');
    assert.equal(f.inserted?.file, floppy1);
    assert.equal(f.inserted?.ro, true);
    assert.equal('tray_open' in f, false, 'a floppy has no tray');
    assert.equal((await findPayloadDrive(qmp, { medium: 'floppy' })).device, 'porthole-payload');
    await ejectPayloadMedium(qmp, { medium: 'floppy' });
    assert.equal((await drive(qmp, 'porthole-payload')).inserted, undefined);
    await insertPayloadMedium(qmp, floppy2, { medium: 'floppy' });
    assert.equal((await drive(qmp, 'porthole-payload')).inserted?.file, floppy2);
  });

  it('names the problem when the drive is wrong or the image is missing', async () => {
    await assert.rejects(findPayloadDrive(qmp, { medium: 'cd', device: 'nope' }), /no drive nope on the VM \(drives: cd0\(cd, empty\), porthole-payload\(floppy, holds a medium\)\)/);
    await assert.rejects(findPayloadDrive(qmp, { medium: 'floppy', device: 'cd0' }), /drive cd0 is not a floppy drive/);
    await assert.rejects(insertPayloadMedium(qmp, join(t.dir, 'missing.iso'), { medium: 'cd' }), /QMP error GenericError: .*missing\.iso.*No such file/);
    assert.equal((await drive(qmp, 'cd0')).inserted, undefined);
  });

  it('starts a q35 VM with a payload CD from qemuPayloadArgs', async () => {
    const d = tempDir();
    const q35 = await startQemu(d.dir, ['-machine', 'q35', ...qemuPayloadArgs(iso1, 'cd')]);
    const c = await connectQmpSocket(q35.qmpSocket);
    try {
      const b = await drive(c, 'porthole-payload');
      assert.equal(b.inserted?.file, iso1);
      assert.equal(b.tray_open, false);
      assert.equal((await findPayloadDrive(c, { medium: 'cd' })).device, 'porthole-payload');
    } finally {
      c.close();
      await q35.stop();
      d.cleanup();
    }
  });

  it('starts an aarch64 virt VM (no IDE, no floppy controller) with a payload CD on virtio-scsi from qemuPayloadArgs', async () => {
    assert.throws(() => qemuPayloadArgs(floppy1, 'floppy', undefined, 'scsi'), /only a CD goes on a SCSI bus/);
    const d = tempDir();
    const virt = await startQemu(d.dir, ['-machine', 'virt', '-cpu', 'cortex-a57', ...qemuPayloadArgs(iso1, 'cd', undefined, 'scsi')], 'qemu-system-aarch64');
    const c = await connectQmpSocket(virt.qmpSocket);
    try {
      const b = await drive(c, 'porthole-payload');
      assert.equal(b.inserted?.file, iso1);
      assert.equal(b.inserted?.ro, true);
      assert.equal((await findPayloadDrive(c, { medium: 'cd' })).device, 'porthole-payload');
    } finally {
      c.close();
      await virt.stop();
      d.cleanup();
    }
  });

  it('reports a QMP socket that is not there, and a peer that is not QMP, without waiting for the timeout', async () => {
    await assert.rejects(connectQmpSocket(join(t.dir, 'absent.sock'), 2000), /QMP .*absent\.sock: connect ENOENT/);
    for (const garbage of ['null\n', 'hello\n']) {
      const sock = join(t.dir, 'fake.sock');
      const server = net.createServer((c) => c.end(garbage));
      await new Promise<void>((r) => server.listen(sock, r));
      try {
        const started = Date.now();
        await assert.rejects(connectQmpSocket(sock, 20_000), /QMP .*fake\.sock: not a JSON object from QEMU/);
        assert.ok(Date.now() - started < 5000, 'failed at once, not at the timeout');
      } finally {
        await new Promise((r) => server.close(r));
      }
    }
  });
});
