// The agent's payload media side without a VM: real images built by the broker's
// builder, read back by the real tools into a directory that stands in for the
// mounted medium, applied by the agent's real write path.
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { v1, Session } from '@porthole/protocol';
import { UnixSocketConnector } from '@porthole/transport';
import { buildFloppyPayload, buildIsoPayload, MANIFEST_FILE_NAME, PayloadSpec } from '@porthole/media';
import { Agent, AgentConfig, applyPayloadMedium, PayloadWatcher, createAuditLogger, defaultConfig, Policy, probeMedium, TransferStore, UserDb, ApplyOptions } from '@porthole/agent';

const S = v1.PayloadState;
const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

interface Fixture {
  dir: string;
  /** Guest paths of the tests live below this. */
  root: string;
  config: AgentConfig;
  audit: Array<Record<string, unknown>>;
  /** Apply the medium extracted in `medium` with the fixture's policy. */
  apply(medium: string, bootId?: string): Promise<v1.PayloadEvent.$Properties[]>;
  cleanup(): void;
}

function fixture(): Fixture {
  const dir = mkdtempSync(join(tmpdir(), 'porthole-payload-'));
  const root = join(dir, 'guest');
  const etc = join(dir, 'etc');
  mkdirSync(root);
  mkdirSync(etc);
  writeFileSync(join(etc, 'passwd'), 'root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000:tester:/home/tester:/bin/sh\n');
  writeFileSync(join(etc, 'group'), 'root:x:0:\nusers:x:100:tester\ntester:x:1000:\n');
  const config = defaultConfig();
  config.payload.stateDir = join(dir, 'payload-state');
  config.transfers.stateDir = join(dir, 'transfers');
  const audit: Array<Record<string, unknown>> = [];
  const lines = new PassThrough();
  lines.on('data', (b: Buffer) => b.toString().split('\n').filter(Boolean).forEach((l) => audit.push(JSON.parse(l) as Record<string, unknown>)));
  const log = createAuditLogger({ silent: true, stream: lines });
  const f: Fixture = {
    dir, root, config, audit,
    async apply(medium, bootId = 'boot-1') {
      const opts: ApplyOptions = {
        files: { policy: new Policy(config), users: new UserDb(etc), transfers: new TransferStore(config.transfers.stateDir, 86400_000), log },
        stateDir: config.payload.stateDir,
        bootId,
      };
      const events = await applyPayloadMedium(opts, { root: medium, device: '/dev/sr0', label: 'PORTHOLE_TEST' });
      await new Promise((r) => setImmediate(r)); // let the audit lines arrive
      return events;
    },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
  return f;
}

/** Build a CD with the broker's builder and extract it with xorriso, as the mounted medium would show it. */
async function isoTree(f: Fixture, specs: PayloadSpec[], name = 'cd'): Promise<string> {
  const iso = join(f.dir, `${name}.iso`);
  await buildIsoPayload(specs, iso, { tmpDir: f.dir });
  const tree = join(f.dir, name);
  execFileSync('xorriso', ['-osirrox', 'on', '-indev', iso, '-extract', '/', tree], { stdio: 'ignore' });
  return tree;
}

function listFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((p) => statSync(join(dir, p)).isFile()).sort();
}

describe('agent: payload media (applied from a directory standing in for the mounted medium)', function () {
  this.timeout(30000);
  let f: Fixture;
  beforeEach(() => (f = fixture()));
  afterEach(() => f.cleanup());

  it('applies a CD: files with owner, group and mode, a non-ASCII path, parents created, then the commands; one APPLIED event per payload', async () => {
    const marker = join(f.root, 'ran');
    const tree = await isoTree(f, [
      {
        id: 'app',
        entries: [
          { guestPath: join(f.root, 'etc/app/app.conf'), content: { data: Buffer.from('key=value\n') }, owner: 'tester', group: 'users', mode: '0640' },
          { guestPath: join(f.root, 'srv/données/日本語.txt'), content: { data: Buffer.from('bonjour') }, mode: 0o600 },
        ],
        commands: [['/bin/sh', '-c', `stat -c %a "$0" > ${marker}`, join(f.root, 'etc/app/app.conf')]],
      },
      { id: 'second', availability: 'run-once', entries: [{ guestPath: join(f.root, 'opt/two'), content: { data: Buffer.alloc(3 << 20, 7) } }] },
    ]);
    const events = await f.apply(tree);
    assert.deepEqual(events.map((e) => [e.payloadId, e.state]), [['app', S.PAYLOAD_APPLIED], ['second', S.PAYLOAD_APPLIED]]);
    const conf = join(f.root, 'etc/app/app.conf');
    assert.equal(readFileSync(conf, 'utf8'), 'key=value\n');
    const st = statSync(conf);
    assert.deepEqual([st.mode & 0o7777, st.uid, st.gid], [0o640, 1000, 100]);
    assert.equal(readFileSync(join(f.root, 'srv/données/日本語.txt'), 'utf8'), 'bonjour');
    assert.equal(statSync(join(f.root, 'srv/données/日本語.txt')).mode & 0o7777, 0o600);
    assert.equal(sha256(readFileSync(join(f.root, 'opt/two'))), sha256(Buffer.alloc(3 << 20, 7)));
    assert.equal(readFileSync(marker, 'utf8').trim(), '640', 'commands run after the files are in place');
    assert.equal(events[0].files!.length, 2);
    assert.equal(events[0].files![0].sha256, sha256('key=value\n'));
    assert.equal(events[0].commands![0].exit!.code, 0);
    assert.equal(events[0].label, 'PORTHOLE_TEST');
    assert.match(events[0].contentSha256!, /^[0-9a-f]{64}$/);
    // No temporaries next to the targets; the audit log has metadata only.
    assert.deepEqual(listFiles(f.root).filter((p) => p.includes('.porthole-')), []);
    const text = JSON.stringify(f.audit);
    assert.ok(!text.includes('key=value') && !text.includes('bonjour'), 'no contents in the audit log');
    assert.ok(f.audit.some((l) => l.message === 'payload file written' && l.path === conf && l.mode === '0640'));
    assert.ok(f.audit.some((l) => l.message === 'payload applied' && l.payloadId === 'app'));
  });

  it('does not apply a permanent payload again unless it changed; a run-once payload once per boot', async () => {
    const target = join(f.root, 'etc/perm.conf');
    const once = join(f.root, 'etc/once.conf');
    const specs = (content: string): PayloadSpec[] => [
      { id: 'perm', entries: [{ guestPath: target, content: { data: Buffer.from(content) } }] },
      { id: 'once', availability: 'run-once', entries: [{ guestPath: once, content: { data: Buffer.from('once') } }] },
    ];
    const v1Tree = await isoTree(f, specs('first'), 'v1');
    assert.deepEqual((await f.apply(v1Tree)).map((e) => e.state), [S.PAYLOAD_APPLIED, S.PAYLOAD_APPLIED]);
    writeFileSync(target, 'changed in the guest');
    writeFileSync(once, 'changed in the guest');
    // Same boot (the agent restarted, or the medium was seen again): both skipped.
    assert.deepEqual((await f.apply(v1Tree)).map((e) => e.state), [S.PAYLOAD_SKIPPED, S.PAYLOAD_SKIPPED]);
    assert.equal(readFileSync(target, 'utf8'), 'changed in the guest');
    // Next boot with the same media: the permanent one stays skipped, the run-once one (attached again) applies.
    assert.deepEqual((await f.apply(v1Tree, 'boot-2')).map((e) => e.state), [S.PAYLOAD_SKIPPED, S.PAYLOAD_APPLIED]);
    assert.equal(readFileSync(target, 'utf8'), 'changed in the guest');
    assert.equal(readFileSync(once, 'utf8'), 'once');
    // The permanent payload's content changed (same id): applied again.
    const v2Tree = await isoTree(f, specs('second'), 'v2');
    assert.deepEqual((await f.apply(v2Tree, 'boot-2')).map((e) => e.state), [S.PAYLOAD_APPLIED, S.PAYLOAD_SKIPPED]);
    assert.equal(readFileSync(target, 'utf8'), 'second');
    const record = JSON.parse(readFileSync(join(f.config.payload.stateDir, 'applied', 'perm.json'), 'utf8')) as Record<string, string>;
    assert.equal(record.contentSha256, (await f.apply(v2Tree, 'boot-2'))[0].contentSha256);
  });

  it('refuses a tampered manifest (manifestSha256) and writes nothing', async () => {
    const tree = await isoTree(f, [{ id: 'x', entries: [{ guestPath: join(f.root, 'etc/x.conf'), content: { data: Buffer.from('x') }, mode: '0644' }] }]);
    const manifestPath = join(tree, MANIFEST_FILE_NAME);
    writeFileSync(manifestPath, readFileSync(manifestPath, 'utf8').replace('"0644"', '"4755"'));
    const events = await f.apply(tree);
    assert.equal(events.length, 1);
    assert.equal(events[0].state, S.PAYLOAD_REFUSED);
    assert.equal(events[0].error!.code, v1.ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    assert.match(events[0].error!.message!, /manifestSha256: hash mismatch/);
    assert.deepEqual(listFiles(f.root), []);
    assert.ok(f.audit.some((l) => l.message === 'payload medium refused' && l.field === 'manifestSha256'));
    assert.ok(!existsSync(join(f.config.payload.stateDir, 'applied')), 'nothing recorded');
  });

  it('refuses a payload whose content on the medium does not match its sha256, before any of its files is written', async () => {
    const tree = await isoTree(f, [
      { id: 'good', entries: [{ guestPath: join(f.root, 'good'), content: { data: Buffer.from('good') } }] },
      { id: 'bad', entries: [
        { guestPath: join(f.root, 'bad-first'), content: { data: Buffer.from('fine') } },
        { guestPath: join(f.root, 'bad-second'), content: { data: Buffer.from('original') } },
      ] },
    ]);
    writeFileSync(join(tree, 'files', '0003'), 'tampered'); // same size as "original"
    const events = await f.apply(tree);
    assert.deepEqual(events.map((e) => e.state), [S.PAYLOAD_APPLIED, S.PAYLOAD_REFUSED]);
    assert.equal(events[1].error!.code, v1.ErrorCode.ERROR_CODE_CHECKSUM_MISMATCH);
    assert.match(events[1].error!.message!, /files\/0003 on the medium \(for .*bad-second\) hashes to/);
    assert.deepEqual(listFiles(f.root), ['good'], 'the refused payload wrote nothing, not even its intact first file');
  });

  it('refuses a medium whose files directory is a link (it could lead anywhere in the guest)', async () => {
    const tree = await isoTree(f, [{ id: 'link', entries: [{ guestPath: join(f.root, 'l'), content: { data: Buffer.from('l') } }] }]);
    renameSync(join(tree, 'files'), join(f.dir, 'elsewhere'));
    symlinkSync(join(f.dir, 'elsewhere'), join(tree, 'files'));
    const events = await f.apply(tree);
    assert.equal(events[0].state, S.PAYLOAD_REFUSED);
    assert.equal(events[0].error!.message, 'files on the medium is not a directory');
    assert.deepEqual(listFiles(f.root), []);
  });

  it("applies the owner's policy: a path outside the allowed prefixes refuses the payload; payload.enabled = false refuses the medium", async () => {
    f.config.fileWrite.allow = [join(f.root, 'allowed')];
    const tree = await isoTree(f, [
      { id: 'in', entries: [{ guestPath: join(f.root, 'allowed/a'), content: { data: Buffer.from('a') } }] },
      { id: 'out', entries: [
        { guestPath: join(f.root, 'allowed/b'), content: { data: Buffer.from('b') } },
        { guestPath: join(f.root, 'elsewhere/c'), content: { data: Buffer.from('c') } },
      ] },
    ]);
    const events = await f.apply(tree);
    assert.deepEqual(events.map((e) => e.state), [S.PAYLOAD_APPLIED, S.PAYLOAD_REFUSED]);
    assert.equal(events[1].error!.code, v1.ErrorCode.ERROR_CODE_POLICY_DENIED);
    assert.match(events[1].error!.rule!, /^file_write\.allow = /);
    assert.deepEqual(listFiles(f.root), ['allowed/a']);

    f.config.payload.enabled = false;
    const off = await f.apply(tree);
    assert.equal(off.length, 1);
    assert.equal(off[0].state, S.PAYLOAD_REFUSED);
    assert.equal(off[0].error!.rule, 'payload.enabled = false');
  });

  it('runs commands only when the policy allows: run_commands = false applies the files and reports the commands as not run', async () => {
    const marker = join(f.root, 'ran');
    const specs: PayloadSpec[] = [{ id: 'cmd', entries: [{ guestPath: join(f.root, 'file'), content: { data: Buffer.from('f') } }], commands: [['/bin/touch', marker]] }];
    f.config.payload.runCommands = false;
    const events = await f.apply(await isoTree(f, specs));
    assert.equal(events[0].state, S.PAYLOAD_APPLIED);
    assert.equal(events[0].commands![0].error!.rule, 'payload.run_commands = false');
    assert.ok(existsSync(join(f.root, 'file')));
    assert.ok(!existsSync(marker));

    // exec allow-list without touch: refused before anything is written.
    rmSync(join(f.config.payload.stateDir), { recursive: true });
    rmSync(join(f.root, 'file'));
    f.config.payload.runCommands = true;
    f.config.exec.commands = ['/bin/true'];
    const refused = await f.apply(await isoTree(f, specs, 'cd2'));
    assert.equal(refused[0].state, S.PAYLOAD_REFUSED);
    assert.match(refused[0].error!.rule!, /^exec\.commands = /);
    assert.deepEqual(listFiles(f.root), []);
  });

  it('reports a failing command as FAILED and does not record the payload, so it is tried again', async () => {
    const tree = await isoTree(f, [{ id: 'fails', entries: [{ guestPath: join(f.root, 'f'), content: { data: Buffer.from('f') } }], commands: [['/bin/sh', '-c', 'printf "out%s\\n" put >&2; exit 3'], ['/bin/touch', join(f.root, 'never')]] }]);
    const events = await f.apply(tree);
    assert.equal(events[0].state, S.PAYLOAD_FAILED);
    assert.equal(events[0].commands!.length, 1, 'the first failure stops the rest');
    assert.equal(events[0].commands![0].exit!.code, 3);
    assert.match(events[0].error!.message!, /exited with status 3/);
    assert.ok(!existsSync(join(f.root, 'never')));
    assert.equal(readFileSync(join(f.config.payload.stateDir, 'fails.log'), 'utf8'), 'output\n', "the command's output goes to the state directory");
    assert.ok(!JSON.stringify(f.audit).includes('output'), 'the output is not in the audit log');
    assert.equal((await f.apply(tree))[0].state, S.PAYLOAD_FAILED, 'tried again, not skipped');
  });

  it('applies a floppy whose names show in another case (FAT)', async () => {
    const img = join(f.dir, 'fd.img');
    await buildFloppyPayload([{ id: 'fd', entries: [{ guestPath: join(f.root, 'etc/fd.conf'), content: { data: Buffer.from('floppy') }, mode: 0o600 }] }], img, { tmpDir: f.dir });
    const tree = join(f.dir, 'fd');
    mkdirSync(tree);
    execFileSync('mcopy', ['-i', img, '-s', '-n', '::/*', tree], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } });
    renameSync(join(tree, 'files'), join(tree, 'FILES'));
    renameSync(join(tree, MANIFEST_FILE_NAME), join(tree, MANIFEST_FILE_NAME.toUpperCase()));
    const events = await f.apply(tree);
    assert.equal(events[0].state, S.PAYLOAD_APPLIED);
    assert.equal(readFileSync(join(f.root, 'etc/fd.conf'), 'utf8'), 'floppy');
    assert.equal(statSync(join(f.root, 'etc/fd.conf')).mode & 0o7777, 0o600);
  });
});

describe('agent: payload media detection (volume label read from the device)', function () {
  this.timeout(30000);
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'porthole-probe-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const spec: PayloadSpec = { entries: [{ guestPath: '/etc/x', content: { data: Buffer.from('x') } }] };

  it('finds the ISO 9660 volume id of a CD and the FAT label of a floppy; other media and empty drives are not payloads', async () => {
    const cd = await buildIsoPayload(spec, join(dir, 'cd.iso'), { tmpDir: dir });
    const fd = await buildFloppyPayload(spec, join(dir, 'fd.img'), { tmpDir: dir });
    const cdProbe = await probeMedium(cd.path);
    assert.deepEqual([cdProbe?.fsType, cdProbe?.label], ['iso9660', cd.label]);
    const fdProbe = await probeMedium(fd.path);
    assert.deepEqual([fdProbe?.fsType, fdProbe?.label], ['vfat', 'PORTHOLE']);
    assert.notEqual(cdProbe!.signature, fdProbe!.signature);
    const other = await buildIsoPayload({ ...spec, id: 'other' }, join(dir, 'other.iso'), { tmpDir: dir });
    assert.notEqual((await probeMedium(other.path))!.signature, cdProbe!.signature, 'another medium, another signature');
    writeFileSync(join(dir, 'blank'), Buffer.alloc(64 * 1024));
    assert.deepEqual(await probeMedium(join(dir, 'blank')), { fsType: undefined, label: '', signature: (await probeMedium(join(dir, 'blank')))!.signature });
    assert.equal(await probeMedium(join(dir, 'no-such-drive')), undefined);
  });
});

describe('agent: payload events reach the broker', function () {
  this.timeout(30000);

  it('sends an event to the connected broker, and keeps those from before a broker connected until one does', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'porthole-events-'));
    const config = defaultConfig();
    config.transfers.stateDir = join(dir, 'transfers');
    config.payload.stateDir = join(dir, 'payloads');
    const log = createAuditLogger({ silent: true });
    const sock = join(dir, 'agent.sock');
    const listener = new UnixSocketConnector(sock, { listen: true });
    const accepted = listener.connect();
    const agent = new Agent({ connector: new UnixSocketConnector(sock), config, log });
    // No drives here: only the events given below.
    const watcher = new PayloadWatcher(agent, { sysBlock: join(dir, 'no-drives') });
    watcher.start();
    let session: Session | undefined;
    const running = agent.run().catch(() => undefined);
    try {
      watcher.report({ payloadId: 'before', state: S.PAYLOAD_APPLIED, device: '/dev/sr0' });
      const got: v1.PayloadEvent[] = [];
      // The broker listens before its handshake, so an event sent right after it is not missed.
      session = new Session(await accepted, { role: 'broker', hello: { softwareVersion: 'test-broker' }, keepaliveIntervalMs: 0 });
      session.on('event', (e: v1.Event) => got.push(e.payload as v1.PayloadEvent));
      await session.ready(5000);
      const until = async (n: number) => {
        for (let i = 0; i < 100 && got.length < n; i++) await new Promise((r) => setTimeout(r, 20));
      };
      await until(1);
      assert.deepEqual(got.map((e) => [e.payloadId, e.state]), [['before', S.PAYLOAD_APPLIED]]);
      watcher.report({ payloadId: 'during', state: S.PAYLOAD_REFUSED, error: { code: v1.ErrorCode.ERROR_CODE_CHECKSUM_MISMATCH, message: 'bad' } });
      await until(2);
      assert.deepEqual(got.map((e) => e.payloadId), ['before', 'during']);
      assert.equal(got[1].error!.code, v1.ErrorCode.ERROR_CODE_CHECKSUM_MISMATCH);
    } finally {
      watcher.stop();
      agent.stop();
      session?.close();
      listener.close();
      await running;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
