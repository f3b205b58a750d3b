import { strict as assert } from 'node:assert';
import { chownSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, IncomingHttpHeaders, Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { fetchSources } from '@porthole/broker/inject';
import { parseManifest } from '@porthole/broker/manifest';
import { makeTestPki } from '../bootiso/fixtures';
import { Guest, porthole, startGuest } from './guest';

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');
const FIXTURES = join(__dirname, 'fixtures', 'cloud-init');

/** A web server for source.uri: answers `body` (or `status`) and keeps the request headers it got. */
async function webServer(body: string, o: { status?: number; tls?: { cert: string; key: string } } = {}) {
  const requests: IncomingHttpHeaders[] = [];
  const handler = (req: { headers: IncomingHttpHeaders }, res: { writeHead(s: number): void; end(b?: string): void }) => {
    requests.push(req.headers);
    res.writeHead(o.status ?? 200);
    res.end(o.status && o.status >= 400 ? 'no' : body);
  };
  const server: Server = o.tls ? createHttpsServer(o.tls, handler) : createHttpServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `${o.tls ? 'https' : 'http'}://127.0.0.1:${port}`, requests, close: () => new Promise((r) => server.close(r)) };
}

describe('broker: porthole inject with cloud-init write_files', function () {
  this.timeout(60000);
  let guest: Guest;
  let n = 0;
  before(async () => {
    guest = await startGuest((c, root) => { c.fileWrite.deny.push(join(root, 'denied')); });
  });
  after(async () => guest.stop());
  const r = (p: string) => join(guest.root, p);

  /** Write a manifest and run `porthole inject` with it. */
  const inject = (manifest: string, json = false, env: NodeJS.ProcessEnv = {}) => {
    const file = join(guest.dir, `manifest-${++n}.yaml`);
    writeFileSync(file, manifest);
    return porthole([...(json ? ['--json'] : []), 'inject', guest.target, file], { env });
  };
  /** One of the fixtures written from cloud-init's documented write_files examples, its paths moved under the test root. */
  const fixture = (name: string, url = '') => readFileSync(join(FIXTURES, name), 'utf8').replaceAll('@ROOT@', guest.root).replaceAll('@URL@', url);
  const existing = (p: string, content: string, mode: number, uid = 0, gid = 0) => {
    mkdirSync(dirname(r(p)), { recursive: true });
    writeFileSync(r(p), content, { mode });
    chownSync(r(p), uid, gid);
  };
  const owner = (p: string) => { const st = statSync(r(p)); return { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid }; };

  describe("cloud-init's documented examples", () => {
    it('1: base64 content, owner root:root, permissions (characters outside base64 dropped, with a warning)', async () => {
      const res = await inject(fixture('example1-b64.yaml'), true);
      assert.equal(res.code, 0, res.stderr + res.stdout.toString());
      assert.equal(readFileSync(r('etc/sysconfig/selinux'), 'utf8'), '\n# SELinux: written by the base64 example\nSELINUX=permissive\n');
      assert.deepEqual(owner('etc/sysconfig/selinux'), { mode: 0o644, uid: 0, gid: 0 });
      const out = JSON.parse(res.stdout.toString());
      assert.match(out.warnings.join('\n'), /3 characters of the content are not base64 \("\.\.\."\); dropped/);
    });

    it('2: append to an existing file; its mode and owner become 0644 root:root, as cloud-init sets them', async () => {
      existing('etc/crontab', 'SHELL=/bin/sh\n', 0o600, 65534, 65534);
      const res = await inject(fixture('example2-append.yaml'));
      assert.equal(res.code, 0, res.stderr);
      assert.equal(readFileSync(r('etc/crontab'), 'utf8'), 'SHELL=/bin/sh\n15 * * * * root ship_logs\n');
      assert.deepEqual(owner('etc/crontab'), { mode: 0o644, uid: 0, gid: 0 });
    });

    it('3: gzip content given as !!binary, permissions 0755', async () => {
      const res = await inject(fixture('example3-gzip.yaml'));
      assert.equal(res.code, 0, res.stderr);
      assert.equal(readFileSync(r('usr/bin/hello'), 'utf8'), '#!/bin/sh\necho "hello from a gzipped file"\n');
      assert.equal(owner('usr/bin/hello').mode, 0o755);
    });

    it('4: a path alone makes an empty file, also over an existing one ("existing files will be overridden")', async () => {
      existing('root/CLOUD_INIT_WAS_HERE', 'old', 0o600);
      const res = await inject(fixture('example4-empty.yaml'));
      assert.equal(res.code, 0, res.stderr);
      assert.equal(readFileSync(r('root/CLOUD_INIT_WAS_HERE'), 'utf8'), '');
      assert.equal(owner('root/CLOUD_INIT_WAS_HERE').mode, 0o644);
    });

    it('5: defer: true is written now, and the warning says why (text and --json)', async () => {
      const text = await inject(fixture('example5-defer.yaml'));
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stderr, /warning: write_files\[0\] \(.*example\.com\.conf\): defer: true has no meaning for a live injection .*after packages are installed/);
      assert.deepEqual(owner('etc/nginx/conf.d/example.com.conf'), { mode: 0o640, uid: 33, gid: 33 });
      const json = JSON.parse((await inject(fixture('example5-defer.yaml'), true)).stdout.toString());
      assert.equal(json.ok, true);
      assert.match(json.warnings[0], /defer: true/);
    });

    it('6: source.uri is fetched with its headers; the answer is the file', async () => {
      const web = await webServer('#!/bin/sh\necho fetched\n');
      try {
        const res = await inject(fixture('example6-source.yaml', web.url));
        assert.equal(res.code, 0, res.stderr);
        assert.equal(readFileSync(r('usr/bin/hello'), 'utf8'), '#!/bin/sh\necho fetched\n');
        assert.equal(owner('usr/bin/hello').mode, 0o755);
        assert.equal(web.requests[0].authorization, 'Basic cG9ydGhvbGU6dGVzdA==');
        assert.equal(web.requests[0]['user-agent'], 'cloud-init on myserver.example.com');
      } finally {
        await web.close();
      }
    });
  });

  describe('source.uri', () => {
    it('https, trusting the CA given in NODE_EXTRA_CA_CERTS', async () => {
      const pki = makeTestPki(guest.dir, 'inject');
      const web = await webServer('over https\n', { tls: pki });
      try {
        const res = await inject(`write_files:\n- path: ${r('https.txt')}\n  source: {uri: "${web.url}/f?token=secret"}\n`, false, { NODE_EXTRA_CA_CERTS: pki.caFile });
        assert.equal(res.code, 0, res.stderr);
        assert.equal(readFileSync(r('https.txt'), 'utf8'), 'over https\n');
      } finally {
        await web.close();
      }
    });

    it('refuses the manifest when the source cannot be read and there is no content: nothing is written over the existing file', async () => {
      existing('usr/bin/keep', '#!/bin/sh\necho keep\n', 0o755);
      // A certificate error is not retried (as in cloud-init): https to a plain http server fails at once.
      const web = await webServer('never');
      try {
        const res = await inject(`write_files:\n- path: ${r('first.txt')}\n  content: first\n- path: ${r('usr/bin/keep')}\n  source:\n    uri: ${web.url.replace('http:', 'https:')}/hello?private_token=s3cret\n    headers: {Authorization: Bearer s3cret}\n  permissions: '0755'\n`);
        assert.equal(res.code, 1, res.stderr);
        assert.match(res.stderr, /write_files\[1\] \(.*usr\/bin\/keep\): cannot fetch source\.uri https:\/\/127\.0\.0\.1:\d+\/hello\?… \(.*\) and the entry has no content to fall back to; nothing was written/);
        assert.doesNotMatch(res.stderr, /s3cret/, 'no token in the message');
        assert.equal(readFileSync(r('usr/bin/keep'), 'utf8'), '#!/bin/sh\necho keep\n');
        assert.equal(owner('usr/bin/keep').mode, 0o755);
        assert.equal(existsSync(r('first.txt')), false, 'the first entry was not written either');
      } finally {
        await web.close();
      }
    });

    it('falls back to content after cloud-init\'s retries, with a warning', async () => {
      const web = await webServer('', { status: 404 });
      try {
        const m = parseManifest(`write_files:\n- path: /x\n  source: {uri: "${web.url}/missing"}\n  content: aW5saW5l\n  encoding: b64\n`);
        await fetchSources(m.files, m.warnings, { retryDelayMs: 0 });
        assert.equal(web.requests.length, 4, 'one try and 3 retries');
        assert.equal(m.files[0].content.toString(), 'inline');
        assert.match(m.warnings[0], /write_files\[0\] \(\/x\): cannot fetch source\.uri http:\/\/127\.0\.0\.1:\d+\/missing \(HTTP 404\); using its content instead/);
      } finally {
        await web.close();
      }
    });

    it('refuses URIs it does not fetch, naming them', () => {
      assert.throws(() => parseManifest('write_files:\n- path: /x\n  source: {uri: "file:///etc/hosts"}\n'), /names a file inside the guest/);
      assert.throws(() => parseManifest('write_files:\n- path: /x\n  source: {uri: "ftp://h/x"}\n'), /fetches only http and https/);
      assert.throws(() => parseManifest('write_files:\n- path: /x\n  source: {uri: "http://h/x", header: {}}\n'), /unknown key source\.header/);
    });
  });

  describe('owner and permissions, as cloud-init sets them', () => {
    it('replacing a file without permissions or owner: 0644 root:root, not the old mode and owner', async () => {
      existing('replace/app.sh', 'old', 0o755, 65534, 65534);
      const res = await inject(`write_files:\n- path: ${r('replace/app.sh')}\n  content: new\n`);
      assert.equal(res.code, 0, res.stderr);
      assert.deepEqual(owner('replace/app.sh'), { mode: 0o644, uid: 0, gid: 0 });
    });

    it('"owner: user" leaves the group as it was: the old file\'s, root\'s for a new file', async () => {
      existing('owner/kept.conf', 'old', 0o644, 0, 33);
      const res = await inject(`write_files:\n- path: ${r('owner/kept.conf')}\n  content: new\n  owner: nobody\n- path: ${r('owner/new.conf')}\n  content: new\n  owner: nobody\n- path: ${r('owner/both.conf')}\n  content: x\n  owner: nobody:www-data\n`);
      assert.equal(res.code, 0, res.stderr);
      assert.deepEqual(owner('owner/kept.conf'), { mode: 0o644, uid: 65534, gid: 33 });
      assert.deepEqual(owner('owner/new.conf'), { mode: 0o644, uid: 65534, gid: 0 });
      assert.deepEqual(owner('owner/both.conf'), { mode: 0o644, uid: 65534, gid: 33 });
    });

    it('permissions as cloud-init reads them: "0640", "640", "0o640", unquoted 0640; a decimal number is refused', () => {
      const mode = (v: string) => parseManifest(`write_files:\n- path: /x\n  permissions: ${v}\n`).files[0].mode;
      for (const v of ["'0640'", "'640'", "'0o640'", '0640', '0o640']) assert.equal(mode(v), 0o640, v);
      assert.throws(() => mode('640'), /permissions 640 is the decimal number 640 to YAML \(cloud-init would apply mode 01200\); write the mode as an octal string/);
      assert.throws(() => mode("'rw-r--r--'"), /permissions must be an octal string/);
    });
  });

  it('applies every encoding, owner "user:group", permissions and append', async () => {
    const binary = Buffer.from([0, 1, 2, 0xfe, 0xff, 0x0a]);
    existing('motd', 'existing line\n', 0o644);
    const res = await inject(`#cloud-config
write_files:
  - path: ${r('etc/plain.conf')}
    content: |
      key = value
      ünïcode = ✓
  - path: ${r('etc/b64.bin')}
    encoding: base64
    content: ${b64(binary)}
    permissions: '0600'
  - path: ${r('etc/gzip.txt')}
    encoding: GZ
    content: !!binary |
      ${b64(gzipSync('gzipped text\n'))}
  - path: ${r('etc/gzb64.txt')}
    encoding: gzip+base64
    content: ${b64(gzipSync('gz+b64 text\n'))}
    owner: nobody:nogroup
    permissions: '0640'
  - path: ${r('motd')}
    content: "appended line\\n"
    append: true
  - path: ${r('etc/plain-text')}
    encoding: text/plain
    content: x
    permissions: 0755
`, true);
    assert.equal(res.code, 0, res.stderr + res.stdout.toString());
    const out = JSON.parse(res.stdout.toString());
    assert.equal(out.ok, true);
    assert.deepEqual(out.files.map((f: { index: number }) => f.index), [0, 1, 2, 3, 4, 5]);
    assert.equal(readFileSync(r('etc/plain.conf'), 'utf8'), 'key = value\nünïcode = ✓\n');
    assert.ok(readFileSync(r('etc/b64.bin')).equals(binary));
    assert.equal(owner('etc/b64.bin').mode, 0o600);
    assert.equal(readFileSync(r('etc/gzip.txt'), 'utf8'), 'gzipped text\n');
    assert.equal(readFileSync(r('etc/gzb64.txt'), 'utf8'), 'gz+b64 text\n');
    assert.deepEqual(owner('etc/gzb64.txt'), { mode: 0o640, uid: 65534, gid: 65534 });
    assert.equal(out.files[3].mode, '0640');
    assert.equal(readFileSync(r('motd'), 'utf8'), 'existing line\nappended line\n');
    assert.equal(owner('etc/plain-text').mode, 0o755);
  });

  it('append as cloud-init reads it: "yes"/"true" strings append (with a warning), anything else not boolean is refused', async () => {
    existing('append.txt', 'a\n', 0o644);
    const res = await inject(`write_files:\n- path: ${r('append.txt')}\n  content: "b\\n"\n  append: "yes"\n`);
    assert.equal(res.code, 0, res.stderr);
    assert.equal(readFileSync(r('append.txt'), 'utf8'), 'a\nb\n');
    assert.match(res.stderr, /append: "yes" is not a boolean \(cloud-init's schema wants true or false\); read as true/);
    // PyYAML keeps "y" a string, which cloud-init would read as false: refused rather than guessed.
    assert.throws(() => parseManifest('write_files:\n- path: /x\n  append: y\n'), /append must be true or false, got "y"/);
    assert.equal(parseManifest('write_files:\n- path: /x\n  append: on\n').files[0].append, true);
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

  it('exits 2 naming the entry and key for a bad manifest, writing nothing', async function () {
    const first = join(guest.root, 'never.txt');
    this.timeout(120000);
    const bad = async (manifest: string, pattern: RegExp, json = false) => {
      const res = await inject(`write_files:\n  - path: ${first}\n    content: ok\n${manifest}`, json);
      assert.equal(res.code, 2, res.stderr);
      if (json) {
        const out = JSON.parse(res.stdout.toString());
        assert.equal(out.error.code, 'USAGE');
        assert.match(out.error.message, pattern);
      } else assert.match(res.stderr, pattern);
    };
    await bad('  - path: relative/x\n    content: y\n', /write_files\[1\]: path must be an absolute path/, true);
    await bad('  - path: /y\n    permission: "0600"\n', /write_files\[1\] \(\/y\): unknown key "permission" \(write_files entries take path, content, source, owner, permissions/);
    await bad('  - path: /y\n    encoding: b64\n    content: "not base64!"\n', /write_files\[1\] \(\/y\): content is not valid base64/);
    await bad('  - path: /y\n    encoding: rot13\n    content: x\n', /unknown encoding "rot13"/);
    await bad('  - path: /y\n    permissions: rw-r--r--\n    content: x\n', /permissions must be an octal string/);
    await bad(`  - path: /y\n    encoding: gz+b64\n    content: ${b64('not gzip')}\n`, /write_files\[1\] \(\/y\): content is not gzip data/);
    await bad('  - path: /y\n    content: 42\n', /content must be a string, got 42 \(quote it\)/);
    await bad('  - path: /y\n    append: maybe\n', /append must be true or false, got "maybe"/);
    await bad('  - path: /y\n    owner: 1000\n', /owner must be a string/);
    await bad('  - [unclosed', /neither YAML nor JSON/);
    assert.equal(existsSync(first), false);
  });

  it('warns about the cloud-config modules it does not apply; refuses templates and MIME user-data', () => {
    const m = parseManifest('#cloud-config\nruncmd: [ls]\npackages: [nginx]\nwrite_files:\n- path: /x\n');
    assert.deepEqual(m.warnings, ['porthole inject applies write_files only; also in this document, not applied: runcmd, packages']);
    assert.throws(() => parseManifest('#cloud-config\nruncmd: [ls]\n'), /this cloud-config has no write_files/);
    assert.throws(() => parseManifest('## template: jinja\n#cloud-config\nwrite_files: []\n'), /jinja template/);
    assert.throws(() => parseManifest('MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="==x=="\n\n--==x==\n'), /MIME multi-part user-data: give porthole inject its #cloud-config part/);
  });

  it('refuses, before writing anything, a manifest whose later entry the owner\'s policy denies (exit 4)', async () => {
    const res = await inject(`write_files:\n- path: ${r('ok-first.txt')}\n  content: x\n- path: ${r('denied/x')}\n  content: x\n`, true);
    assert.equal(res.code, 4);
    const out = JSON.parse(res.stdout.toString());
    assert.equal(out.error.code, 'POLICY_DENIED');
    assert.match(out.error.message, /disabled by the guest's owner: file_write\.deny contains .*denied \(write_files\[1\] \(.*denied\/x\): writing .* is refused by the guest's owner; nothing was written\)/);
    assert.deepEqual(out.files, []);
    assert.equal(existsSync(r('ok-first.txt')), false);
    assert.equal(existsSync(r('denied/x')), false);
  });

  it('a write the agent still refuses stops the run; the report names what was applied and what was not (text and --json)', async () => {
    const m = (tag: string) => `write_files:\n- path: ${r(`${tag}-a.txt`)}\n  content: a\n- path: ${r(`${tag}-b.txt`)}\n  content: b\n  owner: no-such-user\n- path: ${r(`${tag}-c.txt`)}\n  content: c\n`;
    const text = await inject(m('text'));
    assert.equal(text.code, 1);
    assert.match(text.stdout.toString(), /text-a\.txt: 1 bytes/);
    assert.match(text.stderr, /porthole: write_files\[1\] \(.*text-b\.txt\): no such user in the guest: no-such-user\n/);
    assert.match(text.stderr, /porthole: applied 1 of 3 entries: write_files\[0\] \(.*text-a\.txt\)\nporthole: not applied: write_files\[1\] \(.*text-b\.txt\), write_files\[2\] \(.*text-c\.txt\)\n/);
    const json = await inject(m('json'), true);
    assert.equal(json.code, 1);
    const out = JSON.parse(json.stdout.toString());
    assert.equal(out.ok, false);
    assert.equal(out.error.code, 'NO_SUCH_USER');
    assert.deepEqual(out.files.map((f: { index: number; path: string }) => [f.index, f.path]), [[0, r('json-a.txt')]]);
    assert.deepEqual(out.failed, { index: 1, path: r('json-b.txt') });
    assert.deepEqual(out.notApplied, [{ index: 1, path: r('json-b.txt') }, { index: 2, path: r('json-c.txt') }]);
    assert.equal(readFileSync(r('json-a.txt'), 'utf8'), 'a');
    assert.equal(existsSync(r('json-b.txt')) || existsSync(r('json-c.txt')), false);
  });
});
