import { strict as assert } from 'node:assert';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { parseManifest } from '@porthole/broker/manifest';
import { Guest, porthole, startGuest } from './guest';

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');

describe('broker: porthole inject with cloud-init write_files', function () {
  this.timeout(60000);
  let guest: Guest;
  let n = 0;
  before(async () => {
    guest = await startGuest((c, root) => { c.fileWrite.deny.push(join(root, 'denied')); });
  });
  after(async () => guest.stop());

  /** Write a manifest and run `porthole inject` with it. */
  const inject = (manifest: string, json = false) => {
    const file = join(guest.dir, `manifest-${++n}.yaml`);
    writeFileSync(file, manifest);
    return porthole([...(json ? ['--json'] : []), 'inject', guest.target, file]);
  };

  it('applies every encoding, owner "user:group", permissions and append, as cloud-init does', async () => {
    const r = (p: string) => join(guest.root, p);
    const binary = Buffer.from([0, 1, 2, 0xfe, 0xff, 0x0a]);
    writeFileSync(r('motd'), 'existing line\n');
    const res = await inject(`#cloud-config
write_files:
  - path: ${r('etc/plain.conf')}
    content: |
      key = value
      ünïcode = ✓
  - path: ${r('etc/b64.bin')}
    encoding: b64
    content: ${b64(binary)}
    permissions: '0600'
  - path: ${r('etc/gzip.txt')}
    encoding: gzip
    content: !!binary |
      ${b64(gzipSync('gzipped text\n'))}
  - path: ${r('etc/gzb64.txt')}
    encoding: gz+b64
    content: ${b64(gzipSync('gz+b64 text\n'))}
    owner: nobody:nogroup
    permissions: '0640'
  - path: ${r('motd')}
    content: "appended line\\n"
    append: true
  - path: ${r('etc/octal-number')}
    content: x
    permissions: 0755
`, true);
    assert.equal(res.code, 0, res.stderr + res.stdout.toString());
    const out = JSON.parse(res.stdout.toString());
    assert.equal(out.ok, true);
    assert.equal(out.files.length, 6);
    assert.equal(readFileSync(r('etc/plain.conf'), 'utf8'), 'key = value\nünïcode = ✓\n');
    assert.ok(readFileSync(r('etc/b64.bin')).equals(binary));
    assert.equal(statSync(r('etc/b64.bin')).mode & 0o777, 0o600);
    assert.equal(readFileSync(r('etc/gzip.txt'), 'utf8'), 'gzipped text\n');
    assert.equal(readFileSync(r('etc/gzb64.txt'), 'utf8'), 'gz+b64 text\n');
    const st = statSync(r('etc/gzb64.txt'));
    assert.equal(st.mode & 0o777, 0o640);
    assert.equal(st.uid, 65534, 'nobody');
    assert.equal(out.files[3].mode, '0640');
    assert.equal(readFileSync(r('motd'), 'utf8'), 'existing line\nappended line\n');
    assert.equal(statSync(r('etc/octal-number')).mode & 0o777, 0o755);
  });

  it('accepts the plain form (path → base64) in JSON, and a bare write_files list', async () => {
    const p = join(guest.root, 'plain', 'a.bin');
    const res = await inject(JSON.stringify({ [p]: b64('plain form\n') }));
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stdout.toString(), new RegExp(`^${p}: 11 bytes, sha256 [0-9a-f]{64}$`, 'm'));
    assert.equal(readFileSync(p, 'utf8'), 'plain form\n');
    const q = join(guest.root, 'list.txt');
    assert.equal((await inject(`- path: ${q}\n  content: listed\n`)).code, 0);
    assert.equal(readFileSync(q, 'utf8'), 'listed');
  });

  it('exits 2 naming the entry for a bad manifest, writing nothing', async () => {
    const first = join(guest.root, 'never.txt');
    const bad = async (manifest: string, pattern: RegExp) => {
      const res = await inject(manifest);
      assert.equal(res.code, 2, res.stderr);
      assert.match(res.stderr, pattern);
    };
    await bad(`write_files:\n  - path: ${first}\n    content: ok\n  - path: relative/x\n    content: y\n`, /write_files\[1\]: path must be an absolute path/);
    await bad(`write_files:\n  - path: ${first}\n    encoding: b64\n    content: "not base64!"\n`, /write_files\[0\] \(.*never\.txt\): content is not valid base64/);
    await bad(`write_files:\n  - path: ${first}\n    encoding: rot13\n    content: x\n`, /unknown encoding "rot13"/);
    await bad(`write_files:\n  - path: ${first}\n    permissions: rw-r--r--\n    content: x\n`, /permissions must be octal/);
    await bad(`write_files:\n  - path: ${first}\n    encoding: gz+b64\n    content: ${b64('not gzip')}\n`, /write_files\[0\] \(.*never\.txt\): content is not gzip data/);
    await bad('write_files: [unclosed', /neither YAML nor JSON/);
    assert.equal(existsSync(first), false);
  });

  it('stops at the first file the guest refuses (exit 4) and says which', async () => {
    const res = await inject(`write_files:\n  - path: ${join(guest.root, 'denied', 'x')}\n    content: x\n`);
    assert.equal(res.code, 4);
    assert.match(res.stderr, /disabled by the guest's owner/);
    assert.equal(existsSync(join(guest.root, 'denied', 'x')), false);
  });

  it('parses gzip content given as raw bytes and owner without a group', () => {
    const [f] = parseManifest(`write_files:\n  - path: /etc/x\n    owner: app\n    encoding: gzip\n    content: !!binary ${b64(gzipSync('raw'))}\n`);
    assert.equal(f.content.toString(), 'raw');
    assert.equal(f.owner, 'app');
    assert.equal(f.group, undefined);
  });
});
