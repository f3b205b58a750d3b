import { strict as assert } from 'node:assert';
import { mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildIsoPayload, buildPayloadMedium, MANIFEST_FILE_NAME, parsePayloadManifest, payloadContentSha256, PayloadSpec, ToolMissingError } from '@porthole/media';
import { ok, sha256, tempDir } from './util';

const NON_ASCII = '/srv/données/日本語 ファイル.txt';
const NON_UTF8 = Buffer.concat([Buffer.from('/opt/raw-'), Buffer.from([0xc3, 0x28, 0xff]), Buffer.from('.bin')]);

function specs(dir: string): PayloadSpec[] {
  const local = join(dir, 'big.bin');
  writeFileSync(local, Buffer.alloc(300_000, 7));
  return [
    {
      id: 'app-config',
      entries: [
        { guestPath: NON_ASCII, content: { base64: Buffer.from('bonjour\n').toString('base64') }, owner: 'www-data', group: 33, mode: '0640' },
        { guestPath: '/usr/local/bin/setup.sh', content: { base64: Buffer.from('#!/bin/sh\necho ok\n').toString('base64') }, mode: 0o755 },
        { guestPath: NON_UTF8, content: { localFile: local } },
      ],
      commands: [['/usr/local/bin/setup.sh', '--first-boot']],
    },
    { id: 'secret', availability: 'run-once', entries: [{ guestPath: '/root/.token', content: { data: Buffer.from('s3cret') }, mode: 0o400 }] },
  ];
}

describe('media: ISO payload (checked with xorriso, isoinfo, osirrox)', function () {
  this.timeout(60_000);
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => (t = tempDir()));
  afterEach(() => t.cleanup());

  it('builds a Rock Ridge + Joliet ISO whose files, modes, label and manifest the real readers see', async () => {
    const iso = join(t.dir, 'payload.iso');
    const r = await buildIsoPayload(specs(t.dir), iso, { tmpDir: t.dir });
    assert.equal(r.tool, 'xorriso');
    assert.deepEqual(readdirSync(t.dir).sort(), ['big.bin', 'payload.iso'], 'staging directory and temporary output removed');
    assert.equal(statSync(iso).mode & 0o777, 0o600, 'image readable only by its owner');
    assert.equal(r.imageBytes, statSync(iso).size);
    assert.match(r.label, /^PORTHOLE_[0-9A-F]{8}$/);
    assert.equal(r.label, `PORTHOLE_${r.manifest.manifestSha256.slice(0, 8).toUpperCase()}`);

    // Volume id, via isoinfo.
    assert.match(ok('isoinfo', ['-d', '-i', iso]), new RegExp(`Volume id: ${r.label}\\n`));

    // Rock Ridge listing via xorriso: modes per file, neutral names.
    const lsdl = ok('xorriso', ['-indev', iso, '-find', '/', '-exec', 'lsdl']);
    const modeOf = (name: string): string => lsdl.split('\n').find((l) => l.endsWith(`'${name}'`))?.split(/\s+/)[0] ?? 'missing';
    assert.equal(modeOf('/files/0001'), '-rw-r-----');
    assert.equal(modeOf('/files/0002'), '-rwxr-xr-x');
    assert.equal(modeOf('/files/0003'), '-rw-r--r--');
    assert.equal(modeOf('/files/0004'), '-r--------');
    assert.equal(modeOf(`/${MANIFEST_FILE_NAME}`), '-rw-r--r--');

    // isoinfo with Rock Ridge and with Joliet: the long manifest name survives both.
    assert.match(ok('isoinfo', ['-R', '-l', '-i', iso]), /-rwxr-xr-x .* 0002/);
    assert.match(ok('isoinfo', ['-J', '-l', '-i', iso]), new RegExp(MANIFEST_FILE_NAME.replace('.', '\\.')));

    // Extract everything with osirrox; compare with the manifest.
    const out = join(t.dir, 'x');
    ok('osirrox', ['-indev', iso, '-extract', '/', out]);
    const manifest = parsePayloadManifest(readFileSync(join(out, MANIFEST_FILE_NAME), 'utf8'));
    assert.deepEqual(manifest, r.manifest);
    assert.equal(manifest.medium, 'cd');
    assert.deepEqual(manifest.payloads.map((p) => [p.id, p.availability]), [['app-config', 'permanent'], ['secret', 'run-once']]);
    const files = manifest.payloads.flatMap((p) => p.files);
    assert.equal(files.length, 4);
    for (const f of files) {
      const data = readFileSync(join(out, f.source));
      assert.equal(data.length, f.size, f.source);
      assert.equal(sha256(data), f.sha256, f.source);
    }
    assert.equal(files[0].path.toString('utf8'), NON_ASCII);
    assert.deepEqual(files[0].owner, { name: 'www-data' });
    assert.deepEqual(files[0].group, { numeric: 33 });
    assert.ok(files[2].path.equals(NON_UTF8), 'non-UTF-8 guest path kept byte for byte');
    assert.equal(files[2].size, 300_000);
    assert.equal(readFileSync(join(out, files[3].source), 'utf8'), 's3cret');
    assert.deepEqual(manifest.payloads[0].commands, [{ argv: ['/usr/local/bin/setup.sh', '--first-boot'] }]);
  });

  it('falls back to genisoimage when xorriso is missing, with the same content and modes', async () => {
    const bin = join(t.dir, 'bin');
    mkdirSync(bin);
    symlinkSync('/usr/bin/genisoimage', join(bin, 'genisoimage'));
    const iso = join(t.dir, 'g.iso');
    const r = await buildIsoPayload(specs(t.dir), iso, { searchPath: bin });
    assert.equal(r.tool, 'genisoimage');
    assert.equal(statSync(iso).mode & 0o777, 0o600);
    assert.match(ok('isoinfo', ['-d', '-i', iso]), new RegExp(`Volume id: ${r.label}\\n`));
    const listing = ok('isoinfo', ['-R', '-l', '-i', iso]);
    assert.match(listing, /-rw-r----- .* 0001/);
    assert.match(listing, /-rwxr-xr-x .* 0002/);
    const out = join(t.dir, 'x');
    ok('osirrox', ['-indev', iso, '-extract', '/', out]);
    const manifest = parsePayloadManifest(readFileSync(join(out, MANIFEST_FILE_NAME), 'utf8'));
    for (const f of manifest.payloads.flatMap((p) => p.files)) assert.equal(sha256(readFileSync(join(out, f.source))), f.sha256);
  });

  it('names the Debian package when no ISO tool is installed, and leaves nothing behind', async () => {
    const iso = join(t.dir, 'none.iso');
    await assert.rejects(
      buildIsoPayload(specs(t.dir), iso, { searchPath: join(t.dir, 'empty') }),
      (e: Error) => e instanceof ToolMissingError && /xorriso, genisoimage/.test(e.message) && /Debian package "xorriso" or "genisoimage"/.test(e.message),
    );
    await assert.rejects(buildIsoPayload(specs(t.dir), iso, { searchPath: join(t.dir, 'empty'), isoTool: 'xorriso' }), /xorriso not found on PATH: install the Debian package "xorriso"/);
    assert.deepEqual(readdirSync(t.dir).sort(), ['big.bin']);
  });

  it('refuses bad entries before writing anything', async () => {
    const iso = join(t.dir, 'bad.iso');
    await assert.rejects(buildIsoPayload([{ entries: [{ guestPath: 'relative', content: { base64: '' } }] }], iso), /guest path "relative": path is not absolute/);
    await assert.rejects(buildIsoPayload([{ entries: [{ guestPath: '/a', content: { base64: 'not base64!' } }] }], iso), /content of .* is not valid base64/);
    await assert.rejects(buildIsoPayload([{ entries: [{ guestPath: '/a', content: { localFile: join(t.dir, 'nope') } }] }], iso), /cannot read local file .*nope: ENOENT/);
    await assert.rejects(buildIsoPayload([{ entries: [{ guestPath: '/a', content: { base64: '' }, mode: '999' }] }], iso), /mode must be octal/);
    const one = { guestPath: '/a', content: { base64: '' } };
    await assert.rejects(buildIsoPayload([{ id: 'x', entries: [one] }, { id: 'x', entries: [one] }], iso), /payload x: id used twice/);
    await assert.rejects(buildIsoPayload([{ id: 'x', entries: [] }], iso), /payload x: has neither files nor commands/);
    await assert.rejects(
      buildIsoPayload([{ entries: [{ guestPath: '/a', content: { base64: '' } }, { guestPath: '/a', content: { base64: 'AA==' } }] }], iso),
      /guest path "\/a" given twice/,
    );
    await assert.rejects(buildIsoPayload([{ entries: [one] }], join(t.dir, 'no-such-dir', 'x.iso')), /cannot write the image in .*no-such-dir: ENOENT/);
    await assert.rejects(buildPayloadMedium('dvd' as never, [{ entries: [one] }], iso), /medium must be "cd" or "floppy", got "dvd"/);
    assert.deepEqual(readdirSync(t.dir), []);
  });

  it('gives an unchanged payload the same id and hash when rebuilt', async () => {
    const spec: PayloadSpec = { entries: [{ guestPath: '/etc/x', content: { base64: 'eA==' } }] };
    const a = await buildIsoPayload(spec, join(t.dir, 'a.iso'));
    const b = await buildIsoPayload(spec, join(t.dir, 'b.iso'));
    assert.match(a.manifest.payloads[0].id, /^p-[0-9a-f]{16}$/);
    // FORMAT.md: the default id is "p-" + 16 hex digits of the content hash computed with id "".
    assert.equal(a.manifest.payloads[0].id, `p-${payloadContentSha256({ ...a.manifest.payloads[0], id: '' }).slice(0, 16)}`);
    assert.equal(a.manifest.payloads[0].id, b.manifest.payloads[0].id);
    assert.equal(a.manifest.manifestSha256, b.manifest.manifestSha256);
    const c = await buildIsoPayload({ entries: [{ guestPath: '/etc/x', content: { base64: 'eQ==' } }] }, join(t.dir, 'c.iso'));
    assert.notEqual(c.manifest.payloads[0].id, a.manifest.payloads[0].id);
  });
});
