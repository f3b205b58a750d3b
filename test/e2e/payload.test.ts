// Payload media end to end: images built by the broker's builder, attached by
// QEMU at start or over QMP, found and applied by the real agent inside the
// test-bed guest; results checked through the broker client.
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, PortholeClient } from '@porthole/broker';
import { bootVm, Vm, agentBundlePath, agentExecutablePath } from '@porthole/testbed';
import { buildFloppyPayload, buildIsoPayload, buildVdsmMedium, MANIFEST_FILE_NAME, qemuPayloadArgs, BuildResult, PayloadSpec } from '@porthole/media';
import { v1 } from '@porthole/protocol';
import { auditLines, changeMedium, payloadEvents, waitFor } from './helpers';

const S = v1.PayloadState;

function agent() {
  const exe = agentExecutablePath();
  return exe ? { executable: exe } : { bundle: agentBundlePath() };
}

/** A command's stdout and exit code in the guest. */
async function sh(client: PortholeClient, script: string): Promise<{ code: number; out: string }> {
  const task = client.exec({ shell: script });
  const out: Buffer[] = [];
  task.stdout.on('data', (d: Buffer) => out.push(d));
  task.stderr.on('data', () => undefined);
  const exit = await task.exit;
  return { code: exit.code ?? -1, out: Buffer.concat(out).toString() };
}

/** A guest file's text and metadata, read back over the channel. */
async function guestFile(client: PortholeClient, path: string): Promise<{ text: string; mode: number; uid: number; gid: number }> {
  const task = client.readFile(path);
  const parts: Buffer[] = [];
  task.data.on('data', (d: Buffer) => parts.push(d));
  const r = await task.result;
  return { text: Buffer.concat(parts).toString(), mode: r.header.mode, uid: r.header.uid, gid: r.header.gid };
}

describe('payload media in a real VM (QEMU TCG)', function () {
  this.timeout(240000);
  let dir: string;
  before(() => (dir = mkdtempSync(join(tmpdir(), 'porthole-e2e-payload-'))));
  after(() => rmSync(dir, { recursive: true, force: true }));

  const build = (kind: 'cd' | 'floppy', name: string, specs: PayloadSpec[]): Promise<BuildResult> =>
    (kind === 'cd' ? buildIsoPayload : buildFloppyPayload)(specs, join(dir, name), { tmpDir: dir });

  describe('a VM started with a payload CD and a payload floppy', () => {
    let vm: Vm | undefined;
    let client: PortholeClient;
    let events: ReturnType<typeof payloadEvents>;
    let cd: BuildResult;
    let floppy: BuildResult;

    before(async function () {
      cd = await build('cd', 'boot.iso', [{
        id: 'boot-cd',
        entries: [
          { guestPath: '/etc/app/app.conf', content: { data: Buffer.from('from the CD\n') }, owner: 'tester', group: 'users', mode: '0640' },
          { guestPath: '/srv/données/ファイル.txt', content: { data: Buffer.from('non-ASCII path') } },
        ],
        commands: [['/bin/sh', '-c', 'stat -c "%U:%G %a" /etc/app/app.conf > /run/boot-cd.ran']],
      }]);
      floppy = await build('floppy', 'boot.img', [{ id: 'boot-floppy', entries: [{ guestPath: '/etc/floppy.conf', content: { data: Buffer.from('from the floppy\n') }, mode: 0o600 }] }]);
      const started = Date.now();
      // The owner maps one foreign label (a cloud-init config drive's) to a directory; Porthole media are unaffected.
      vm = await bootVm({ agent: agent(), cdrom: cd.path, floppy: floppy.path, agentConfig: '[payload]\nforeign_targets = { config-2 = "/var/lib/config-drive" }\n' });
      client = await connect(vm.target, { timeoutMs: 90000 });
      events = payloadEvents(client);
      console.log(`      boot to connected agent: ${Date.now() - started} ms`);
    });
    after(async () => {
      client?.close();
      await vm?.shutdown();
    });
    afterEach(function () {
      if (this.currentTest?.state === 'failed') console.log(vm?.consoleTail(60));
    });

    it('applies the CD found at start: files with owner, group and mode, then its command', async () => {
      const applied = await waitFor('the boot CD applied', async () => (await auditLines(vm!, client, 'payload applied')).find((l) => l.payloadId === 'boot-cd'));
      assert.equal(applied.device, '/dev/sr0');
      assert.equal(applied.contentSha256, cd.manifest.payloads[0].contentSha256);
      const conf = await guestFile(client, '/etc/app/app.conf');
      assert.deepEqual(conf, { text: 'from the CD\n', mode: 0o640, uid: 1000, gid: 100 });
      assert.equal((await guestFile(client, '/srv/données/ファイル.txt')).text, 'non-ASCII path');
      assert.equal((await guestFile(client, '/run/boot-cd.ran')).text, 'tester:users 640\n');
      const detected = (await auditLines(vm!, client, 'payload medium detected')).find((l) => l.device === '/dev/sr0');
      assert.equal(detected?.label, cd.label);
      // Unmounted after applying: nothing of the medium stays mounted.
      assert.doesNotMatch((await sh(client, 'cat /proc/mounts')).out, /\/dev\/sr0|\/dev\/fd0/);
    });

    it('applies the floppy found at start', async () => {
      const applied = await waitFor('the boot floppy applied', async () => (await auditLines(vm!, client, 'payload applied')).find((l) => l.payloadId === 'boot-floppy'));
      assert.equal(applied.device, '/dev/fd0');
      const conf = await guestFile(client, '/etc/floppy.conf');
      assert.deepEqual([conf.text, conf.mode, conf.uid], ['from the floppy\n', 0o600, 0]);
    });

    it('detects a CD inserted over QMP, applies it and reports it to the connected broker', async () => {
      const inserted = await build('cd', 'hot.iso', [{ id: 'hot', entries: [{ guestPath: '/opt/hot/plugged.txt', content: { data: Buffer.from('hot-plugged') }, mode: '0604' }] }]);
      const qmp = await vm!.qmp();
      const t0 = Date.now();
      await changeMedium(qmp, inserted.path);
      const event = await events.next((e) => e.payloadId === 'hot');
      console.log(`      QMP insert to PayloadEvent: ${Date.now() - t0} ms`);
      assert.equal(event.state, S.PAYLOAD_APPLIED);
      assert.equal(event.label, inserted.label);
      assert.equal(event.contentSha256, inserted.manifest.payloads[0].contentSha256);
      assert.deepEqual(event.files!.map((f) => [Buffer.from(f.path!).toString(), f.sha256, Number(f.size)]), [['/opt/hot/plugged.txt', inserted.manifest.payloads[0].files[0].sha256, 11]]);
      const file = await guestFile(client, '/opt/hot/plugged.txt');
      assert.deepEqual([file.text, file.mode], ['hot-plugged', 0o604]);
    });

    it('does not apply a permanent payload again when the same CD comes back; the guest change stays', async () => {
      await sh(client, 'echo edited in the guest > /opt/hot/plugged.txt');
      const qmp = await vm!.qmp();
      await changeMedium(qmp, undefined);
      // The agent notices the empty drive before the medium returns.
      await new Promise((r) => setTimeout(r, 5000));
      const before = events.seen.length;
      await changeMedium(qmp, join(dir, 'hot.iso'));
      const skipped = await events.next((e) => e.payloadId === 'hot' && events.seen.indexOf(e) >= before);
      assert.equal(skipped.state, S.PAYLOAD_SKIPPED);
      assert.equal((await guestFile(client, '/opt/hot/plugged.txt')).text, 'edited in the guest\n');
    });

    it('refuses a CD whose manifest was tampered with and writes nothing', async () => {
      // The builder's tree, with one mode changed in the manifest but its hashes left as they were.
      const good = await build('cd', 'good.iso', [{ id: 'tampered', entries: [{ guestPath: '/etc/tampered.conf', content: { data: Buffer.from('x') }, mode: '0644' }] }]);
      const tree = join(dir, 'tampered-tree');
      execFileSync('xorriso', ['-osirrox', 'on', '-indev', good.path, '-extract', '/', tree], { stdio: 'ignore' });
      const manifest = join(tree, MANIFEST_FILE_NAME);
      writeFileSync(manifest, readFileSync(manifest, 'utf8').replace('"0644"', '"4755"'));
      const bad = join(dir, 'tampered.iso');
      execFileSync('xorriso', ['-outdev', `stdio:${bad}`, '-volid', good.label, '-joliet', 'on', '-rockridge', 'on', '-map', tree, '/', '-commit', '-end'], { stdio: 'ignore' });
      const before = events.seen.length;
      await changeMedium(await vm!.qmp(), bad);
      const refused = await events.next((e) => e.state === S.PAYLOAD_REFUSED && events.seen.indexOf(e) >= before);
      assert.equal(refused.label, good.label);
      assert.equal(refused.payloadId, '');
      assert.match(refused.error!.message!, /manifestSha256: hash mismatch/);
      assert.equal((await sh(client, 'test -e /etc/tampered.conf')).code, 1, 'nothing written');
      assert.ok((await auditLines(vm!, client, 'payload medium refused')).some((l) => l.field === 'manifestSha256'));
    });

    it('reports a CD built the way oVirt\'s vdsm builds payloads, with its label and files, and applies nothing when no label is mapped', async () => {
      const sysprep = join(dir, 'sysprep.iso');
      await buildVdsmMedium('cd', [{ path: 'sysprep/unattend.xml', content: { data: Buffer.from('<unattend/>\n') } }], sysprep, { label: 'SYSPREP', tmpDir: dir });
      const before = events.seen.length;
      await changeMedium(await vm!.qmp(), sysprep);
      const e = await events.next((x) => x.foreign === true && events.seen.indexOf(x) >= before);
      assert.equal(e.state, S.PAYLOAD_REPORTED);
      assert.deepEqual([e.label, e.fsType, e.device], ['SYSPREP', 'iso9660', '/dev/sr0']);
      assert.deepEqual(e.mediumFiles!.map((f) => [Buffer.from(f.path!).toString(), Number(f.size)]), [['sysprep/unattend.xml', 12]]);
      assert.equal((await sh(client, 'test -e /var/lib/config-drive')).code, 1, 'nothing written');
      assert.doesNotMatch((await sh(client, 'cat /proc/mounts')).out, /\/dev\/sr0/, 'mounted read-only only while it was read');
    });

    it('applies a config-2 CD under the directory the owner\'s config maps to that label', async () => {
      const drive = join(dir, 'config-drive.iso');
      const built = await buildVdsmMedium('cd', [
        { path: 'openstack/latest/meta_data.json', content: { data: Buffer.from('{"uuid": "e2e"}') } },
        { path: 'openstack/latest/user_data', content: { data: Buffer.from('#cloud-config\n') } },
      ], drive, { label: 'config-2', tmpDir: dir });
      const before = events.seen.length;
      await changeMedium(await vm!.qmp(), drive);
      const e = await events.next((x) => x.foreign === true && events.seen.indexOf(x) >= before);
      assert.equal(e.state, S.PAYLOAD_APPLIED, e.error?.message ?? '');
      assert.deepEqual([e.label, Buffer.from(e.targetDir!).toString()], ['config-2', '/var/lib/config-drive']);
      assert.deepEqual(e.files!.map((f) => [Buffer.from(f.path!).toString(), f.sha256]),
        built.files.map((f) => [`/var/lib/config-drive/${f.path}`, f.sha256]));
      const userData = await guestFile(client, '/var/lib/config-drive/openstack/latest/user_data');
      assert.deepEqual(userData, { text: '#cloud-config\n', mode: 0o640, uid: 0, gid: 0 });
      assert.ok((await auditLines(vm!, client, 'foreign medium applied')).some((l) => l.label === 'config-2' && l.target === '/var/lib/config-drive'));
    });
  });

  describe('a run-once payload attached with the QEMU arguments for the next start only', () => {
    let vm: Vm | undefined;
    let client: PortholeClient | undefined;
    afterEach(async function () {
      if (this.currentTest?.state === 'failed') console.log(vm?.consoleTail(60));
      client?.close();
      await vm?.shutdown();
      vm = client = undefined;
    });

    it('is applied on that start and gone on the next one', async () => {
      const once = await build('cd', 'once.iso', [{ id: 'first-boot', availability: 'run-once', entries: [{ guestPath: '/etc/first-boot.conf', content: { data: Buffer.from('once') } }] }]);
      vm = await bootVm({ agent: agent(), qemuArgs: qemuPayloadArgs(once.path, 'cd') });
      client = await connect(vm.target, { timeoutMs: 90000 });
      const applied = await waitFor('the run-once CD applied', async () => (await auditLines(vm!, client!, 'payload applied')).find((l) => l.payloadId === 'first-boot'));
      assert.equal(applied.availability, 'run-once');
      assert.equal((await guestFile(client, '/etc/first-boot.conf')).text, 'once');
      client.close();
      await vm.shutdown();

      // The next start: the run-once arguments are not passed again.
      vm = await bootVm({ agent: agent() });
      client = await connect(vm.target, { timeoutMs: 90000 });
      const blocks = (await (await vm.qmp()).execute('query-block')) as Array<{ device: string; inserted?: unknown }>;
      assert.ok(!blocks.some((b) => b.device === 'porthole-payload'), 'no payload drive');
      assert.ok(!blocks.some((b) => b.inserted && b.device === 'cd0'), 'the CD drive is empty');
      // Give the agent a few drive checks, then: nothing detected, nothing written.
      await new Promise((r) => setTimeout(r, 5000));
      assert.deepEqual(await auditLines(vm, client, 'payload medium detected'), []);
      assert.equal((await sh(client, 'test -e /etc/first-boot.conf')).code, 1);
    });
  });
});
