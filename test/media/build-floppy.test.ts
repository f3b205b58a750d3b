import { strict as assert } from 'node:assert';
import { mkdirSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  buildFloppyPayload,
  FLOPPY_CAPACITY_BYTES,
  FLOPPY_IMAGE_BYTES,
  MANIFEST_FILE_NAME,
  parsePayloadManifest,
  PayloadTooLargeError,
} from '@porthole/media';
import { ok, okBytes, run, sha256, tempDir } from './util';

describe('media: floppy payload (checked with mtools and fsck.vfat)', function () {
  this.timeout(60_000);
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => (t = tempDir()));
  afterEach(() => t.cleanup());

  it('builds a 1.44 MB FAT image with label, serial, manifest and files the real tools read', async () => {
    const img = join(t.dir, 'payload.img');
    const r = await buildFloppyPayload(
      [
        {
          id: 'net-config',
          entries: [
            { guestPath: '/etc/network/interfaces.d/ëth0', content: { base64: Buffer.from('auto eth0\n').toString('base64') }, owner: 0, group: 'root', mode: '0644' },
            { guestPath: 'C:\\Windows\\Setup\\Scripts\\SetupComplete.cmd', content: { base64: Buffer.from('echo done\r\n').toString('base64') } },
          ],
          commands: [['/bin/systemctl', 'restart', 'networking']],
        },
        { availability: 'run-once', entries: [{ guestPath: '/tmp/once', content: { data: Buffer.alloc(70_000, 1) } }] },
      ],
      img,
    );
    assert.equal(r.tool, 'mkfs.vfat');
    assert.equal(r.label, 'PORTHOLE');
    assert.equal(r.serial, `${r.manifest.manifestSha256.slice(0, 4)}-${r.manifest.manifestSha256.slice(4, 8)}`.toUpperCase());
    const st = statSync(img);
    assert.equal(st.size, FLOPPY_IMAGE_BYTES);
    assert.equal(st.mode & 0o777, 0o600);

    assert.match(ok('fsck.vfat', ['-n', img]), /4 files|files, \d+\/2847 clusters/);
    const root = ok('mdir', ['-i', img, '::/']);
    assert.match(root, /Volume in drive : is PORTHOLE/);
    assert.match(root, new RegExp(`Volume Serial Number is ${r.serial}`));
    assert.match(root, /porthole-payload\.json/);
    assert.match(ok('mdir', ['-i', img, '::/files']), /0001\s+10 .*\n0002\s+11 .*\n0003\s+70000 /);

    const manifest = parsePayloadManifest(ok('mtype', ['-i', img, `::${MANIFEST_FILE_NAME}`]));
    assert.deepEqual(manifest, r.manifest);
    assert.equal(manifest.medium, 'floppy');
    for (const f of manifest.payloads.flatMap((p) => p.files)) {
      const data = okBytes('mtype', ['-i', img, `::${f.source}`]);
      assert.equal(data.length, f.size);
      assert.equal(sha256(data), f.sha256);
    }
    assert.equal(manifest.payloads[0].files[0].pathText, '/etc/network/interfaces.d/ëth0');
    assert.equal(manifest.payloads[0].files[1].path.toString(), 'C:\\Windows\\Setup\\Scripts\\SetupComplete.cmd');
    assert.equal(manifest.payloads[1].availability, 'run-once');
  });

  it('fills the floppy to the last cluster, and refuses one byte more with the size', async () => {
    const manifestClusters = 2; // checked below: the manifest of this payload is 513..1024 bytes
    const dirCluster = 1;
    const fits = FLOPPY_CAPACITY_BYTES - (manifestClusters + dirCluster) * 512;
    const local = join(t.dir, 'fill.bin');
    writeFileSync(local, Buffer.alloc(fits, 0xab));
    const img = join(t.dir, 'full.img');
    const r = await buildFloppyPayload({ id: 'fill', entries: [{ guestPath: '/fill.bin', content: { localFile: local } }] }, img);
    const manifestBytes = okBytes('mtype', ['-i', img, `::${MANIFEST_FILE_NAME}`]).length;
    assert.ok(manifestBytes > 512 && manifestBytes <= 1024, `manifest is ${manifestBytes} bytes`);
    assert.match(ok('mdir', ['-i', img, '::/']), /\s0 bytes free/);
    assert.equal(run('fsck.vfat', ['-n', img]).code, 0);
    assert.equal(sha256(okBytes('mtype', ['-i', img, '::files/0001'])), r.manifest.payloads[0].files[0].sha256);

    writeFileSync(local, Buffer.alloc(fits + 1, 0xab));
    const img2 = join(t.dir, 'over.img');
    await assert.rejects(
      buildFloppyPayload({ id: 'fill', entries: [{ guestPath: '/fill.bin', content: { localFile: local } }] }, img2),
      (e: Error) =>
        e instanceof PayloadTooLargeError &&
        e.needed === FLOPPY_CAPACITY_BYTES + 512 &&
        e.message === `payload does not fit on a 1.44 MB floppy: it needs ${FLOPPY_CAPACITY_BYTES + 512} bytes, the floppy holds ${FLOPPY_CAPACITY_BYTES} bytes (use a CD instead)`,
    );
    assert.ok(!readdirSync(t.dir).includes('over.img'));
  });

  it('refuses a large payload before reading it, with its size', async () => {
    const img = join(t.dir, 'big.img');
    await assert.rejects(
      buildFloppyPayload({ entries: [{ guestPath: '/big', content: { data: Buffer.alloc(3_000_000) } }] }, img),
      /it needs 300\d{4} bytes, the floppy holds 1457664 bytes/,
    );
    assert.deepEqual(readdirSync(t.dir), []);
  });

  it('names dosfstools or mtools when one is missing', async () => {
    const bin = join(t.dir, 'bin');
    mkdirSync(bin);
    const spec = { entries: [{ guestPath: '/a', content: { base64: 'YQ==' } }] };
    await assert.rejects(buildFloppyPayload(spec, join(t.dir, 'a.img'), { searchPath: bin }), /mkfs\.vfat, mkfs\.fat found on PATH: install the Debian package "dosfstools"/);
    symlinkSync('/usr/sbin/mkfs.vfat', join(bin, 'mkfs.vfat'));
    await assert.rejects(buildFloppyPayload(spec, join(t.dir, 'a.img'), { searchPath: bin }), /mcopy not found on PATH: install the Debian package "mtools"/);
    assert.deepEqual(readdirSync(t.dir), ['bin']);
  });
});
