// End to end through the machine's real libvirtd (started by the test bed when none runs): the
// test guest as a libvirt domain (TCG), reached as libvirt:DOMAIN by the CLI and the library,
// across reboot, destroy + start and a libvirtd restart; payload media through libvirt; a
// boot-iso XML started with virsh create. One domain serves every case of the first part.
import { strict as assert } from 'node:assert';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes, createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, PortholeClient, UnreachableError } from '@porthole/broker';
import { LibvirtChannelConnector, LibvirtError, locateChannel, PORTHOLE_CHANNEL_NAME, Virsh } from '@porthole/libvirt';
import { buildIsoPayload, attachPayloadToDomainXml } from '@porthole/media';
import { startRangeHttpsServer, type RangeHttpsServer } from '@porthole/bootiso';
import { PortholeError } from '@porthole/protocol';
import { agentBundlePath, bootLibvirtVm, buildBootIso, LibvirtVm, restartLibvirtd, testbedDomainXml, TESTBED_LIBVIRT_URI } from '@porthole/testbed';
import { porthole } from '../broker/guest';
import { run } from './helpers';
import { makeTestPki, trustSystemWide } from '../bootiso/fixtures';
import { checkBootIsoEdit } from '../libvirt/bootiso-edit';

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
// The agent as a bundle run by the guest's node: half the initramfs of the single executable, so a quicker boot
// (the executable itself is tested by vm.test.ts).
const AGENT = { bundle: agentBundlePath() };

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(500);
  }
}

describe('end to end through libvirt (real libvirtd, a TCG domain, libvirt:DOMAIN targets)', function () {
  this.timeout(300_000);
  let vm: LibvirtVm;
  let client: PortholeClient;
  let dir: string;
  const bootId = async () => (await run(client, ['cat', '/proc/sys/kernel/random/boot_id'])).stdout.trim();
  // Long enough for a boot under TCG on a busy machine (a reboot took 85 s with the load at 9 on 2 cores).
  const reconnect = async () => (client = await connect(vm.target, { timeoutMs: 240_000 }));
  /** Runs CLI calls with the library client disconnected (a QEMU chardev socket serves one host connection at a time). */
  async function withoutClient(fn: () => Promise<void>): Promise<void> {
    client.close();
    try {
      await fn();
    } finally {
      await reconnect();
    }
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-e2e-libvirt-'));
    // Payload images are opened by QEMU as libvirt's QEMU user.
    chmodSync(dir, 0o755);
    const started = Date.now();
    vm = await bootLibvirtVm({ agent: AGENT });
    await reconnect();
    console.log(`      libvirt domain ${vm.name}: boot to connected agent ${Date.now() - started} ms`);
  });
  after(async () => {
    client?.close();
    await vm?.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed' && vm) console.log(vm.consoleTail(60));
  });

  it('the CLI through libvirt:DOMAIN: info, exec with output streamed live, cp both ways, inject', () => withoutClient(async () => {
    const info = await porthole(['--json', 'info', vm.target]);
    assert.equal(info.code, 0, info.stderr);
    assert.equal(JSON.parse(info.stdout.toString()).hostname, 'porthole-guest');

    // The first line reaches the host while the command still sleeps.
    const started = Date.now();
    let firstAt = 0;
    const exec = await porthole(['exec', vm.target, '--', 'sh', '-c', 'echo first; sleep 3; echo second; exit 7'], {
      onStdout: () => { firstAt ||= Date.now(); },
    });
    assert.equal(exec.code, 7, exec.stderr);
    assert.equal(exec.stdout.toString(), 'first\nsecond\n');
    assert.ok(Date.now() - firstAt >= 2500, `the first line came ${Date.now() - firstAt} ms before the end, not while the command ran (${firstAt - started} ms after the start)`);

    const data = randomBytes(3 << 20);
    const local = join(dir, 'up.bin');
    writeFileSync(local, data);
    const up = await porthole(['--json', 'cp', local, `${vm.target}:/srv/libvirt/up.bin`, '--mkdir', '--mode', '0640', '--owner', 'tester']);
    assert.equal(up.code, 0, up.stderr);
    assert.deepEqual([JSON.parse(up.stdout.toString()).sha256, JSON.parse(up.stdout.toString()).mode], [sha256(data), '0640']);
    const back = join(dir, 'down.bin');
    const down = await porthole(['cp', `${vm.target}:/srv/libvirt/up.bin`, back]);
    assert.equal(down.code, 0, down.stderr);
    assert.equal(sha256(readFileSync(back)), sha256(data));

    const manifest = join(dir, 'user-data.yaml');
    writeFileSync(manifest, '#cloud-config\nwrite_files:\n  - path: /etc/app/from-libvirt.conf\n    content: "injected\\n"\n    permissions: "0600"\n');
    const inject = await porthole(['inject', vm.target, manifest]);
    assert.equal(inject.code, 0, inject.stderr);
    const cat = await porthole(['exec', vm.target, '--', 'stat', '-c', '%a %s', '/etc/app/from-libvirt.conf']);
    assert.equal(cat.stdout.toString(), '600 9\n');
  }));

  it('the connection URI: --connect, LIBVIRT_DEFAULT_URI and libvirt:URI/DOMAIN reach the domain; another URI is used, not ignored', () => withoutClient(async () => {
    const viaTarget = `libvirt:${TESTBED_LIBVIRT_URI}/${vm.name}`;
    for (const [args, env] of [
      [['--connect', TESTBED_LIBVIRT_URI, 'ping', vm.target], {}],
      [['ping', vm.target], { LIBVIRT_DEFAULT_URI: TESTBED_LIBVIRT_URI }],
      [['ping', viaTarget], { LIBVIRT_DEFAULT_URI: 'qemu:///nowhere' }],
    ] as Array<[string[], NodeJS.ProcessEnv]>) {
      const r = await porthole(args, { env });
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stdout.toString(), /^pong from porthole-agent/);
    }
    const cp = await porthole(['cp', `${viaTarget}:/etc/app/from-libvirt.conf`, '-']);
    assert.equal(cp.stdout.toString(), 'injected\n', cp.stderr);
    // A URI with no libvirt behind it: the call fails naming it, so the option was honoured.
    const wrong = await porthole(['--connect', 'qemu:///nowhere', 'ping', vm.target]);
    assert.equal(wrong.code, 3);
    assert.match(wrong.stderr, /qemu:\/\/\/nowhere/);
    const remote = await porthole(['ping', `libvirt:qemu+ssh://root@kvm7.example.org/system/${vm.name}`]);
    assert.equal(remote.code, 3);
    assert.match(remote.stderr, /libvirt on kvm7\.example\.org: a domain's channel is a socket on its own host, so run porthole there/);
  }));

  it('a domain that is not there or not running exits 3 at once with a sentence saying so', async () => {
    const virsh = new Virsh({ uri: TESTBED_LIBVIRT_URI });
    const name = `${vm.name}-x`;
    const undefinedDomain = await porthole(['exec', `libvirt:${name}`, '--', 'true']);
    assert.equal(undefinedDomain.code, 3);
    assert.equal(undefinedDomain.stderr, `porthole: there is no libvirt domain "${name}" at qemu:///system\n`);

    // Defined, never started: refused at once (a guest that is booting is waited for instead).
    const xml = join(dir, 'off.xml');
    writeFileSync(xml, testbedDomainXml({ name, consoleLog: join(dir, 'off-console.log') }));
    await virsh.run(['define', xml]);
    try {
      const started = Date.now();
      const off = await porthole(['--timeout', '60', 'info', `libvirt:${name}`]);
      assert.equal(off.code, 3);
      assert.equal(off.stderr, `porthole: libvirt domain ${name} is not running (shut off) at qemu:///system\n`);
      assert.ok(Date.now() - started < 20_000, 'not after the 60 s timeout');
    } finally {
      await virsh.run(['undefine', name]);
    }
  });

  it('a running domain without the channel, or whose guest never opens it, is reported as such', async () => {
    // Firmware with nothing to boot: QEMU runs, no guest ever opens a port.
    const virsh = new Virsh({ uri: TESTBED_LIBVIRT_URI });
    const name = `${vm.name}-e`;
    const xml = join(dir, 'empty.xml');
    writeFileSync(xml, testbedDomainXml({ name, consoleLog: join(dir, 'empty-console.log'), memoryMb: 64 }));
    await virsh.run(['create', xml]);
    try {
      const silent = await porthole(['--timeout', '4', 'info', `libvirt:${name}`]);
      assert.equal(silent.code, 3);
      assert.match(silent.stderr, new RegExp(`libvirt domain ${name} is running, but its guest has not opened port org\\.porthole\\.agent\\.0 \\(is porthole-agent installed and running in the guest\\?\\)`));
      const absent = new LibvirtChannelConnector({ domain: name, uri: TESTBED_LIBVIRT_URI, channelName: 'org.example.absent' });
      await assert.rejects(absent.connect(), (e: unknown) => e instanceof LibvirtError && e.kind === 'no-channel' && e.permanent &&
        /has no virtio channel named org\.example\.absent: add <channel type='unix'>/.test((e as Error).message));
    } finally {
      await virsh.run(['destroy', name]);
      rmSync(`/var/log/libvirt/qemu/${name}.log`, { force: true });
    }
  });

  it('keeps working across a libvirtd restart; a CLI call made while libvirtd is down waits for it', async () => {
    const virsh = new Virsh({ uri: TESTBED_LIBVIRT_URI });
    let during: ReturnType<typeof porthole> | undefined;
    try {
      // libvirtd stays down for 3 s: every virsh call on this machine fails meanwhile (see restartLibvirtd).
      await restartLibvirtd(async () => {
        await assert.rejects(virsh.run(['uri']), (e: unknown) => e instanceof LibvirtError && e.kind === 'no-libvirtd');
        // The open connection does not pass through libvirtd.
        assert.equal((await run(client, ['echo', 'while libvirtd is down'])).stdout, 'while libvirtd is down\n');
        client.close();
        during = porthole(['--timeout', '120', 'exec', vm.target, '--', 'echo', 'after the restart']);
        await sleep(3000);
      });
      const r = await during!;
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.toString(), 'after the restart\n');
    } finally {
      await during;
      await reconnect();
    }
    // The new libvirtd took the running domain over: its channel, and its guest's end of it, are known again (QEMU
    // reports the port's changes at most once a second, so libvirt may tell the last CLI call's close first).
    assert.equal((await run(client, ['echo', 'ok'])).stdout, 'ok\n');
    await waitFor('libvirt to see the guest\'s end open', async () => (await locateChannel(virsh, vm.name, PORTHOLE_CHANNEL_NAME)).channel.state === 'connected' || undefined, 10_000);
  });

  it('payload media through libvirt: change-media into the empty CD-ROM drive, then a CD-ROM hot-plugged with attach-device --live', async () => {
    const cd = (id: string, path: string, text: string) =>
      buildIsoPayload([{ id, entries: [{ guestPath: path, content: { data: Buffer.from(text) }, mode: '0644' }] }], join(dir, `${id}.iso`), { tmpDir: dir });
    const first = await cd('lv-change-media', '/etc/payload/first.conf', 'through change-media\n');
    const second = await cd('lv-attach-device', '/etc/payload/second.conf', 'through attach-device\n');

    const a = await porthole(['payload', 'attach', vm.target, first.path]);
    assert.equal(a.code, 0, a.stderr);
    assert.match(a.stdout.toString(), /into drive hdc of libvirt:\S+ \(change-media, until it is ejected or the domain stops\)/);
    assert.equal(await waitFor('the first payload applied', async () => (await run(client, ['cat', '/etc/payload/first.conf'])).stdout || undefined), 'through change-media\n');

    // hdc holds a medium now: the next one goes onto the SCSI bus, hot-plugged.
    const b = await porthole(['payload', 'attach', vm.target, second.path]);
    assert.equal(b.code, 0, b.stderr);
    assert.match(b.stdout.toString(), /into drive sda of libvirt:\S+ \(hot-plugged/);
    assert.equal(await waitFor('the second payload applied', async () => (await run(client, ['cat', '/etc/payload/second.conf'])).stdout || undefined), 'through attach-device\n');
    const live = await vm.virsh.dumpXml(vm.name);
    assert.match(live, /<target dev='sda' bus='scsi'\/>/);
    assert.match(live, /<alias name='ua-porthole-payload'\/>/);

    // Eject: the payload drive by default (the hot-plugged one is unplugged), the other by name.
    for (const [args, drive] of [[[], 'sda'], [['--device', 'hdc'], 'hdc']] as Array<[string[], string]>) {
      const e = await porthole(['payload', 'eject', vm.target, ...args]);
      assert.equal(e.code, 0, e.stderr);
      assert.equal(e.stdout.toString(), `ejected drive ${drive} of ${vm.target}\n`);
    }
    const after = await vm.virsh.dumpXml(vm.name);
    assert.doesNotMatch(after, /ua-porthole-payload|\.iso/);
  });

  it('boot-iso and payload xml on XML libvirtd wrote: only the edited lines change, and libvirt takes the result', async () => {
    checkBootIsoEdit(await vm.virsh.dumpXml(vm.name), 'live');
    checkBootIsoEdit(await vm.virsh.dumpXml(vm.name, { inactive: true }), 'inactive');
    // The payload XML of the definition libvirt wrote is one libvirt defines (test driver: nothing starts).
    const withPayload = attachPayloadToDomainXml(await vm.virsh.dumpXml(vm.name, { inactive: true }), { image: join(dir, 'lv-change-media.iso'), medium: 'cd' });
    const file = join(dir, 'with-payload.xml');
    writeFileSync(file, withPayload);
    await new Virsh({ uri: 'test:///default' }).run(['define', '--validate', file]);
  });

  it('waits for the agent across `virsh reboot`: work in flight fails clearly, then the same client goes on', async () => {
    const before = await bootId();
    const consoleAt = vm.console().length;
    const pending = client.exec(['sleep', '120']);
    await pending.started;
    await vm.domain('reboot');
    await assert.rejects(pending.exit, (e: PortholeError) => e.codeName === 'SESSION_RESET');
    await vm.waitForConsole(/porthole-testbed: services started/, 180_000, consoleAt);
    assert.notEqual(await bootId(), before, 'a new boot');
  });

  it('reconnects across `virsh destroy` + `virsh start`: stopped is said at once, the new socket path is found', async () => {
    const virsh = vm.virsh;
    const was = await locateChannel(virsh, vm.name, PORTHOLE_CHANNEL_NAME);
    const before = await bootId();
    await vm.domain('destroy');
    await assert.rejects(client.info(), (e: unknown) => e instanceof UnreachableError && new RegExp(`libvirt domain ${vm.name} is not running \\(shut off\\)`).test((e as Error).message));
    await vm.domain('start');
    // The same client: its next request finds the domain's new socket and waits for the agent.
    assert.match((await client.info()).hello!.softwareVersion!, /^porthole-agent/);
    assert.notEqual(await bootId(), before);
    const now = await locateChannel(virsh, vm.name, PORTHOLE_CHANNEL_NAME);
    assert.notEqual(now.domain.id, was.domain.id);
    assert.notEqual(now.channel.path, was.channel.path, 'libvirt put the socket in the new run\'s directory');
  });
});

describe('boot-iso through libvirt: a `porthole boot-iso --run-once` XML started with virsh create', function () {
  this.timeout(300_000);
  const MARKER = 'porthole.bootiso=libvirt';
  let dir: string;
  let untrust: (() => void) | undefined;
  let server: RangeHttpsServer | undefined;
  let vm: LibvirtVm | undefined;
  let client: PortholeClient | undefined;
  before(() => (dir = mkdtempSync(join(tmpdir(), 'porthole-e2e-libvirt-iso-'))));
  after(async () => {
    client?.close();
    await vm?.shutdown();
    await server?.close();
    untrust?.();
    rmSync(dir, { recursive: true, force: true });
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed' && vm) console.log(vm.consoleTail(60));
  });

  it('boots the guest from the https test server, and its agent answers', async () => {
    const pki = makeTestPki(dir, 'libvirt');
    // QEMU's https driver trusts the system store only.
    untrust = trustSystemWide(pki.caFile);
    const iso = buildBootIso({ agent: AGENT, cmdlineMarker: MARKER, volumeId: 'PORTHOLE_LIBVIRT' });
    server = await startRangeHttpsServer({ file: iso.path, cert: pki.cert, key: pki.key, range: true });
    const started = Date.now();
    vm = await bootLibvirtVm({
      firmwareBoot: true,
      transient: true,
      bootTimeoutMs: 240_000,
      transformXml: async (xml) => {
        const input = join(dir, 'domain.xml');
        const output = join(dir, 'run-once.xml');
        writeFileSync(input, xml);
        const r = await porthole(['boot-iso', '--xml', input, '--url', server!.url, '--run-once', '--out', output]);
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stderr, /preflight OK/);
        return readFileSync(output, 'utf8');
      },
    });
    client = await connect(vm.target, { timeoutMs: 90_000 });
    console.log(`      boot from https through libvirt to connected agent: ${Date.now() - started} ms`);
    assert.match((await run(client, ['cat', '/proc/cmdline'])).stdout, new RegExp(MARKER));
    assert.ok(server.stats.ranged > 0, 'QEMU read the ISO with Range requests');
    const live = await vm.virsh.dumpXml(vm.name);
    assert.match(live, new RegExp(`<source protocol='https' name='/[^']+'[^>]*>\\s*<host name='127\\.0\\.0\\.1' port='${server.port}'/>`));
    assert.match(live, /<porthole:boot-iso [^>]*mode=.run-once./);
  });

  it('a CLI command whose transient domain is destroyed under it exits 3, saying the domain is gone', async () => {
    client!.close();
    let started: () => void;
    const running = new Promise<void>((resolve) => (started = resolve));
    const exec = porthole(['exec', vm!.target, '--', 'sh', '-c', 'echo started; sleep 120'], { onStdout: () => started() });
    await running;
    await vm!.domain('destroy');
    const r = await exec;
    assert.equal(r.code, 3, r.stderr);
    assert.equal(r.stderr, `porthole: there is no libvirt domain "${vm!.name}" at qemu:///system\n`);
  });
});
