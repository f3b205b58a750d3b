import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import {
  canonicalJson,
  checkGuestPath,
  isPayloadLabel,
  ManifestInput,
  parsePayloadManifest,
  PayloadManifestError,
  serializePayloadManifest,
} from '@porthole/media/manifest';
import { sha256 } from './util';

const NON_UTF8 = Buffer.from([0x2f, 0x6f, 0x70, 0x74, 0x2f, 0xff, 0xfe, 0x2e, 0x62, 0x69, 0x6e]); // "/opt/\xff\xfe.bin"

function sample(): ManifestInput {
  return {
    medium: 'cd',
    payloads: [
      {
        id: 'site-config',
        availability: 'permanent',
        files: [
          {
            path: Buffer.from('/etc/motd – grüße ✓', 'utf8'),
            pathText: '/etc/motd – grüße ✓',
            source: 'files/0001',
            size: 5,
            sha256: sha256('hello'),
            owner: { name: 'root' },
            group: { numeric: 0 },
            mode: 0o640,
          },
          { path: NON_UTF8, pathText: '', source: 'files/0002', size: 0, sha256: sha256(''), owner: null, group: null, mode: null },
        ],
        commands: [{ argv: ['/bin/sh', '-c', 'echo done'] }],
      },
      { id: 'second', availability: 'run-once', files: [], commands: [{ argv: ['/usr/bin/true'] }] },
    ],
  };
}

/** Re-serializes edited JSON with correct hashes, so a test can reach one field's check past the hash checks. */
function rehash(edit: (m: any) => void): string {
  const m = JSON.parse(serializePayloadManifest(sample()).text);
  edit(m);
  delete m.manifestSha256;
  for (const p of m.payloads) {
    delete p.contentSha256;
    p.contentSha256 = sha256(canonicalJson(p));
  }
  m.manifestSha256 = sha256(canonicalJson(m));
  return JSON.stringify(m);
}

function refused(text: string, field: RegExp, message: RegExp): void {
  assert.throws(
    () => parsePayloadManifest(text),
    (e: unknown) => {
      assert.ok(e instanceof PayloadManifestError, `not a PayloadManifestError: ${String(e)}`);
      assert.match(e.field, field);
      assert.match(e.message, message);
      return true;
    },
  );
}

describe('media: payload manifest', () => {
  it('round-trips exact path bytes, principals, modes, commands and hashes', () => {
    const { text, manifest } = serializePayloadManifest(sample());
    const parsed = parsePayloadManifest(text);
    assert.deepEqual(parsed, manifest);
    const [f1, f2] = parsed.payloads[0].files;
    assert.equal(f1.path.toString('utf8'), '/etc/motd – grüße ✓');
    assert.equal(f1.pathText, '/etc/motd – grüße ✓');
    assert.deepEqual(f1.owner, { name: 'root' });
    assert.deepEqual(f1.group, { numeric: 0 });
    assert.equal(f1.mode, 0o640);
    assert.ok(f2.path.equals(NON_UTF8), 'non-UTF-8 path bytes kept');
    assert.equal(f2.pathText, '/opt/\ufffd\ufffd.bin');
    assert.equal(f2.mode, null);
    assert.deepEqual(parsed.payloads[0].commands, [{ argv: ['/bin/sh', '-c', 'echo done'] }]);
    assert.equal(parsed.payloads[1].availability, 'run-once');
    const raw = JSON.parse(text);
    assert.equal(raw.payloads[0].files[0].mode, '0640');
    assert.equal(raw.payloads[0].files[1].pathB64, NON_UTF8.toString('base64'));
    // The documented hash: sha256 of the canonical JSON without the hash field.
    const body = { ...raw };
    delete body.manifestSha256;
    assert.equal(raw.manifestSha256, sha256(canonicalJson(body)));
    const p0 = { ...raw.payloads[0] };
    delete p0.contentSha256;
    assert.equal(raw.payloads[0].contentSha256, sha256(canonicalJson(p0)));
  });

  it('is pure: importing @porthole/media/manifest loads no other module of the package, no fs or child_process', () => {
    const script =
      "const before = new Set(Object.keys(require.cache)); require('@porthole/media/manifest');" +
      "const added = Object.keys(require.cache).filter((k) => !before.has(k) && !k.includes('node_modules'));" +
      "process.stdout.write(JSON.stringify(added));";
    const out = execFileSync(process.execPath, ['--conditions=porthole-src', '-r', 'tsx/cjs', '-e', script], { encoding: 'utf8' });
    const loaded = JSON.parse(out) as string[];
    assert.deepEqual(loaded.map((f) => f.replace(/.*\/packages\//, '')), ['media/src/manifest.ts']);
    assert.doesNotMatch(readFileSync(require.resolve('@porthole/media/manifest'), 'utf8'), /from 'node:(fs|child_process|net)/);
  });

  it('changes a payload content hash when anything in it changes, and only that payload', () => {
    const a = serializePayloadManifest(sample()).manifest;
    const changed = sample();
    changed.payloads[0].files[0].mode = 0o600;
    const b = serializePayloadManifest(changed).manifest;
    assert.notEqual(a.payloads[0].contentSha256, b.payloads[0].contentSha256);
    assert.equal(a.payloads[1].contentSha256, b.payloads[1].contentSha256);
    assert.notEqual(a.manifestSha256, b.manifestSha256);
  });

  it('refuses a tampered manifest by its hash', () => {
    const { text } = serializePayloadManifest(sample());
    const tampered = text.replace('"0640"', '"0666"');
    assert.notEqual(tampered, text);
    refused(tampered, /^manifestSha256$/, /hash mismatch/);
    // A forged manifest hash does not help if the payload hash is stale.
    const m = JSON.parse(tampered);
    delete m.manifestSha256;
    m.manifestSha256 = sha256(canonicalJson(m));
    refused(JSON.stringify(m), /^payloads\[0\]\.contentSha256$/, /hash mismatch/);
  });

  it('refuses malformed manifests with the field named', () => {
    refused('not json', /^$/, /not JSON/);
    refused('[]', /^$/, /expected a JSON object/);
    refused(rehash((m) => (m.schemaVersion = 2)), /^schemaVersion$/, /unsupported schema version number 2/);
    refused(rehash((m) => (m.format = 'other')), /^format$/, /expected "porthole-payload"/);
    refused(rehash((m) => (m.extra = 1)), /^$/, /unknown key "extra"/);
    refused(rehash((m) => delete m.payloads[0].files[0].owner), /^payloads\[0\]\.files\[0\]$/, /missing key "owner"/);
    refused(rehash((m) => (m.payloads[0].files[0].sha256 = 'ABC')), /files\[0\]\.sha256$/, /64 lowercase hex/);
    refused(rehash((m) => (m.payloads[0].files[0].mode = '644')), /files\[0\]\.mode$/, /4 octal digits/);
    refused(rehash((m) => (m.payloads[0].files[0].mode = 420)), /files\[0\]\.mode$/, /expected a string/);
    refused(rehash((m) => (m.payloads[0].files[0].owner = -1)), /files\[0\]\.owner$/, /integer 0\.\./);
    refused(rehash((m) => (m.payloads[0].files[0].owner = 'a:b')), /files\[0\]\.owner$/, /not a valid user/);
    refused(rehash((m) => (m.payloads[0].files[0].size = -1)), /files\[0\]\.size$/, /non-negative integer/);
    refused(rehash((m) => (m.payloads[0].files[0].source = '../etc')), /files\[0\]\.source$/, /4 to 6 digits/);
    refused(rehash((m) => (m.payloads[0].files[1].source = 'files/0001')), /files\[1\]\.source$/, /used by another file/);
    refused(rehash((m) => (m.payloads[0].files[0].path = 'other')), /files\[0\]\.path$/, /does not match pathB64/);
    refused(rehash((m) => (m.payloads[0].files[0].pathB64 = 'L2V0Yy9h=')), /files\[0\]\.pathB64$/, /canonical base64/);
    refused(
      rehash((m) => {
        m.payloads[0].files[0].pathB64 = Buffer.from('/etc/../shadow').toString('base64');
        m.payloads[0].files[0].path = '/etc/../shadow';
      }),
      /files\[0\]\.pathB64$/,
      /"\.\." component/,
    );
    refused(
      rehash((m) => {
        m.payloads[0].files[1] = { ...m.payloads[0].files[0], source: 'files/0002' };
      }),
      /files\[1\]\.pathB64$/,
      /appears twice/,
    );
    refused(rehash((m) => (m.payloads[1].id = 'site-config')), /^payloads\[1\]\.id$/, /appears twice/);
    refused(rehash((m) => (m.payloads[1].id = '../x')), /^payloads\[1\]\.id$/, /expected/);
    refused(rehash((m) => (m.payloads[1].availability = 'sometimes')), /availability$/, /"permanent" or "run-once"/);
    refused(rehash((m) => (m.payloads[1].commands = [{ argv: [] }])), /commands\[0\]\.argv$/, /non-empty program/);
    refused(rehash((m) => (m.payloads[1].commands = [{ argv: ['a\u0000b'] }])), /argv\[0\]$/, /NUL/);
    refused(rehash((m) => (m.payloads = [])), /^payloads$/, /no payloads/);
    refused(rehash((m) => (m.medium = 'tape')), /^medium$/, /"cd" or "floppy"/);
  });

  it('checks guest paths', () => {
    assert.equal(checkGuestPath(Buffer.from('/etc/hosts')), undefined);
    assert.equal(checkGuestPath(Buffer.from('C:\\Windows\\setup.cmd')), undefined);
    assert.equal(checkGuestPath(Buffer.from('D:/x/y')), undefined);
    assert.match(checkGuestPath(Buffer.from('etc/hosts'))!, /not absolute/);
    assert.match(checkGuestPath(Buffer.from('/etc/'))!, /directory/);
    assert.match(checkGuestPath(Buffer.from('/a//b'))!, /empty component/);
    assert.match(checkGuestPath(Buffer.from('C:\\a\\..\\b'))!, /"\.\."/);
    assert.match(checkGuestPath(Buffer.from('/a\0b'))!, /NUL/);
    assert.match(checkGuestPath(Buffer.alloc(0))!, /empty/);
  });

  it('canonical JSON sorts keys and refuses non-integers; labels are recognized', () => {
    assert.equal(canonicalJson({ b: [1, 'x'], a: { d: null, c: true } }), '{"a":{"c":true,"d":null},"b":[1,"x"]}');
    assert.throws(() => canonicalJson(1.5), /integers only/);
    assert.ok(isPayloadLabel('PORTHOLE_1A2B3C4D'));
    assert.ok(isPayloadLabel('porthole   '));
    assert.ok(!isPayloadLabel('CDROM'));
  });
});
