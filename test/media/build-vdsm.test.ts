// Media in vdsm's layout (oVirt's payloads: each file at its own path, an optional
// label such as config-2), checked with the readers a guest or an admin would use.
import { strict as assert } from 'node:assert';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildVdsmMedium, FLOPPY_IMAGE_BYTES, MediumFile } from '@porthole/media';
import { ok, okBytes, sha256, tempDir } from './util';

/** A cloud-init config drive's files, as oVirt's engine hands them to vdsm. */
function configDrive(dir: string): MediumFile[] {
  writeFileSync(join(dir, 'user-data'), '#cloud-config\nwrite_files:\n- path: /etc/from-config-drive\n  content: hi\n');
  return [
    { path: 'openstack/latest/meta_data.json', content: { data: Buffer.from('{"uuid": "5c1bcc4c-1d2e-4f3a-9b0e-000000000001"}') } },
    { path: '/openstack/latest/user_data', content: { localFile: join(dir, 'user-data') } },
    { path: 'openstack/content/0000', content: { base64: Buffer.from('nameserver 192.0.2.53\n').toString('base64') } },
    { path: 'données/ファイル.txt', content: { data: Buffer.from([0, 1, 2, 255]) } },
  ];
}

describe('media: vdsm-layout payload media (checked with isoinfo, xorriso, mtools, fsck.vfat)', function () {
  this.timeout(60_000);
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => (t = tempDir()));
  afterEach(() => t.cleanup());

  it('a CD labelled config-2: every file at its own path, bytes exact, 0640 root-owned, no Porthole manifest', async () => {
    const iso = join(t.dir, 'cidata.iso');
    const files = configDrive(t.dir);
    const r = await buildVdsmMedium('cd', files, iso, { label: 'config-2', tmpDir: t.dir });
    assert.deepEqual([r.tool, r.label, r.imageBytes], ['xorriso', 'config-2', statSync(iso).size]);
    assert.equal(statSync(iso).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(t.dir).sort(), ['cidata.iso', 'user-data'], 'no staging left');
    assert.match(ok('isoinfo', ['-d', '-i', iso]), /^Volume id: config-2$/m);
    const listed = ok('isoinfo', ['-R', '-f', '-i', iso]).trim().split('\n').sort();
    assert.deepEqual(listed, ['/données', '/données/ファイル.txt', '/openstack', '/openstack/content', '/openstack/content/0000', '/openstack/latest',
      '/openstack/latest/meta_data.json', '/openstack/latest/user_data']);
    assert.deepEqual(okBytes('isoinfo', ['-R', '-x', '/openstack/latest/user_data', '-i', iso]), readFileSync(join(t.dir, 'user-data')));
    assert.deepEqual(okBytes('isoinfo', ['-R', '-x', '/données/ファイル.txt', '-i', iso]), Buffer.from([0, 1, 2, 255]));
    assert.match(ok('isoinfo', ['-R', '-l', '-i', iso]), /-rw-r-----\s+1\s+0\s+0\s+22 .*\b0000\s*$/m);
    // Joliet too (what Windows reads).
    assert.ok(ok('isoinfo', ['-J', '-f', '-i', iso]).includes('/openstack/latest/meta_data.json'));
    // xorriso reads it back, and its content is exactly the files given.
    const out = join(t.dir, 'x');
    ok('osirrox', ['-indev', iso, '-extract', '/', out]);
    assert.equal(readFileSync(join(out, 'openstack/content/0000'), 'utf8'), 'nameserver 192.0.2.53\n');
    assert.deepEqual(readdirSync(out).sort(), ['données', 'openstack']);
    assert.deepEqual(r.files.map((f) => [f.path, f.sha256]), [
      ['openstack/latest/meta_data.json', sha256(readFileSync(join(out, 'openstack/latest/meta_data.json')))],
      ['openstack/latest/user_data', sha256(readFileSync(join(t.dir, 'user-data')))],
      ['openstack/content/0000', sha256('nameserver 192.0.2.53\n')],
      ['données/ファイル.txt', sha256(Buffer.from([0, 1, 2, 255]))],
    ]);
  });

  it('with genisoimage (vdsm\'s own tool) when asked: the same paths, label and modes', async () => {
    const iso = join(t.dir, 'g.iso');
    const r = await buildVdsmMedium('cd', configDrive(t.dir), iso, { label: 'config-2', isoTool: 'genisoimage', tmpDir: t.dir });
    assert.equal(r.tool, 'genisoimage');
    assert.match(ok('isoinfo', ['-d', '-i', iso]), /^Volume id: config-2$/m);
    assert.deepEqual(okBytes('isoinfo', ['-R', '-x', '/openstack/latest/user_data', '-i', iso]), readFileSync(join(t.dir, 'user-data')));
    assert.match(ok('isoinfo', ['-R', '-l', '-i', iso]), /-rw-r-----\s+1\s+0\s+0\s+22 .*\b0000\s*$/m);
    assert.match(ok('isoinfo', ['-R', '-l', '-i', iso]), /^dr-xr-xr-x|^drwxr-xr-x/m);
  });

  it('a floppy labelled config-2 that mtools and fsck.vfat read; without a label, the tools\' defaults', async () => {
    const img = join(t.dir, 'cidata.img');
    await buildVdsmMedium('floppy', configDrive(t.dir), img, { label: 'config-2' });
    assert.equal(statSync(img).size, FLOPPY_IMAGE_BYTES);
    assert.match(ok('fsck.vfat', ['-n', img]), /: 9 files, \d+\/2847 clusters/, '4 files and 5 directories, a clean file system');
    assert.match(ok('mlabel', ['-s', '-i', img, '::']), /Volume label is config-2/);
    assert.match(ok('blkid', [img]), /LABEL="config-2"/);
    assert.equal(okBytes('mtype', ['-i', img, '::/openstack/latest/user_data']).toString(), readFileSync(join(t.dir, 'user-data'), 'utf8'));
    assert.deepEqual(okBytes('mtype', ['-i', img, '::/données/ファイル.txt']), Buffer.from([0, 1, 2, 255]));
    assert.match(ok('mdir', ['-b', '-/', '-i', img, '::/']), /openstack\/content\/0000/);

    const iso = join(t.dir, 'plain.iso');
    await buildVdsmMedium('cd', [{ path: 'sysprep.inf', content: { data: Buffer.from('[Unattended]\r\n') } }], iso);
    assert.match(ok('isoinfo', ['-d', '-i', iso]), /^Volume id: ISOIMAGE$/m);
  });

  it('refuses what vdsm\'s layout cannot carry, before writing anything', async () => {
    const out = join(t.dir, 'x.iso');
    const data = { data: Buffer.from('x') };
    await assert.rejects(buildVdsmMedium('cd', [{ path: 'a/../b', content: data }], out), /without "\." or "\.\."/);
    await assert.rejects(buildVdsmMedium('cd', [{ path: 'a', content: data }, { path: '/a', content: data }], out), /"a" given twice/);
    await assert.rejects(buildVdsmMedium('cd', [{ path: 'a', content: data }, { path: 'a/b', content: data }], out), /"a" is both a file and a directory/);
    await assert.rejects(buildVdsmMedium('cd', [{ path: 'a', content: data }], out, { label: 'PORTHOLE_12345678' }), /Porthole's own media/);
    await assert.rejects(buildVdsmMedium('floppy', [{ path: 'a', content: data }], out, { label: 'twelve-chars' }), /a FAT label is 1 to 11/);
    await assert.rejects(buildVdsmMedium('floppy', [{ path: 'big', content: { data: Buffer.alloc(1_500_000) } }], out), /does not fit on a 1\.44 MB floppy/);
    assert.deepEqual(readdirSync(t.dir), []);
  });
});
