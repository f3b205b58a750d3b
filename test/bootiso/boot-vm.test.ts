// Issue 9 in the real VM test bed: the test guest (kernel, initramfs, agent) as a
// bootable ISO on a local https server with Range support, its CA in the system
// trust store (QEMU's curl driver trusts nothing else), booted by QEMU from the
// arguments qemuArgs() generates, with no direct kernel boot.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CertificateError, preflight, qemuArgs, RangeNotSupportedError, startRangeHttpsServer, type RangeHttpsServer } from '@porthole/bootiso';
import { connect, PortholeClient } from '@porthole/broker';
import { agentBundlePath, bootVm, buildBootIso, type BootIso, type Vm } from '@porthole/testbed';
import { makeTestPki, trustSystemWide, type TestCert } from './fixtures';

/** On the kernel command line only when the CD's ISOLINUX entry booted the guest. */
const MARKER = 'porthole.bootiso=https-cd';
const VOLUME_ID = 'PORTHOLE_BOOT';

describe('boot-iso in the real VM test bed (QEMU TCG boots the guest from an https ISO)', function () {
  this.timeout(240_000);
  let dir: string;
  let trusted: TestCert;
  let rogue: TestCert;
  let untrust: (() => void) | undefined;
  let iso: BootIso;
  let vm: Vm | undefined;
  let client: PortholeClient | undefined;
  const servers: RangeHttpsServer[] = [];

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-bootiso-vm-'));
    trusted = makeTestPki(dir, 'trusted');
    rogue = makeTestPki(dir, 'rogue');
    untrust = trustSystemWide(trusted.caFile);
    iso = buildBootIso({ agent: { bundle: agentBundlePath() }, cmdlineMarker: MARKER, volumeId: VOLUME_ID });
  });
  after(async () => {
    client?.close();
    await vm?.shutdown();
    for (const s of servers.splice(0)) await s.close();
    untrust?.();
    rmSync(dir, { recursive: true, force: true });
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed' && vm) console.log(vm.consoleTail(60));
  });

  async function serve(range: boolean, pki: TestCert): Promise<RangeHttpsServer> {
    const s = await startRangeHttpsServer({ file: iso.path, cert: pki.cert, key: pki.key, range });
    servers.push(s);
    return s;
  }

  /** Runs a shell command in the guest through the broker; its stdout, after checking it exited 0. */
  async function guestShell(command: string): Promise<string> {
    const task = client!.exec({ shell: command });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    task.stdout.on('data', (d: Buffer) => out.push(d));
    task.stderr.on('data', (d: Buffer) => err.push(d));
    const exit = await task.exit;
    assert.equal(exit.code, 0, `"${command}" failed in the guest: ${Buffer.concat(err).toString()}`);
    return Buffer.concat(out).toString();
  }

  it('with the test CA in the system store, preflight and QEMU both refuse a certificate from another CA', async () => {
    const s = await serve(true, rogue);
    await assert.rejects(preflight(s.url), (e: unknown) => e instanceof CertificateError && e.code === 'CERT_UNTRUSTED');
    const started = Date.now();
    await assert.rejects(
      bootVm({ firmwareBoot: true, qemuArgs: qemuArgs(s.url).args, bootTimeoutMs: 60_000 }),
      (e: Error) => /QEMU exited before/.test(e.message) && /certificate/i.test(e.message),
    );
    assert.ok(Date.now() - started < 30_000, 'QEMU gives up at start, not after a guest timeout');
  });

  it('preflight and QEMU both refuse the same ISO from a server without Range support', async () => {
    const s = await serve(false, trusted);
    await assert.rejects(preflight(s.url), (e: unknown) => e instanceof RangeNotSupportedError && e.code === 'NO_ACCEPT_RANGES');
    await assert.rejects(
      bootVm({ firmwareBoot: true, qemuArgs: qemuArgs(s.url).args, bootTimeoutMs: 60_000 }),
      (e: Error) => /QEMU exited before/.test(e.message) && /does not support 'range'/.test(e.message),
    );
  });

  it('the test bed refuses guest options on a firmware boot (they belong on the boot medium)', async () => {
    await assert.rejects(bootVm({ firmwareBoot: true, bootScript: 'true' }), /belong on the boot medium/);
  });

  it('preflight passes against the system trust store alone', async () => {
    const s = await serve(true, trusted);
    const r = await preflight(s.url);
    assert.equal(r.certificate.verified, true);
    assert.equal(r.certificate.issuer, 'Porthole trusted test CA');
    assert.equal(r.size, statSync(iso.path).size);
    assert.equal(r.volumeId, VOLUME_ID);
    assert.deepEqual(r.warnings, []);
  });

  it('QEMU boots the guest from the https CD with the generated arguments, and the agent answers the broker', async () => {
    const s = await serve(true, trusted);
    const generated = qemuArgs(s.url);
    assert.ok(generated.args.some((a) => a.includes('"sslverify":true')), 'certificate checks stay on');
    const started = Date.now();
    vm = await bootVm({ firmwareBoot: true, qemuArgs: generated.args });
    const bootMs = Date.now() - started;
    client = await connect(vm.target, { timeoutMs: 90_000 });
    const info = await client.info();
    const answeredMs = Date.now() - started;
    assert.match(info.hello!.softwareVersion!, /^porthole-agent /);
    console.log(`      ISO ${(r2(statSync(iso.path).size / 2 ** 20))} MiB over https: guest ready in ${r2(bootMs / 1000)} s, ` +
      `agent answered after ${r2(answeredMs / 1000)} s; ${s.stats.requests} requests, ${s.stats.ranged} ranged`);
    // Everything the guest runs came through ranged reads of the https server.
    assert.ok(s.stats.ranged > 10, `only ${s.stats.ranged} ranged reads`);
    const blocks = (await (await vm.qmp()).execute('query-named-block-nodes')) as Array<{ 'node-name': string; drv: string; file: string }>;
    const https = blocks.find((b) => b['node-name'] === 'bootiso-https');
    assert.equal(https?.drv, 'https');
    assert.equal(https?.file, s.url);
  });

  it('the agent reports that the guest booted from the CD: its boot entry on the kernel command line, the CD mounted', async () => {
    assert.ok(client, 'the guest booted');
    const cmdline = (await guestShell('cat /proc/cmdline')).trim().split(/\s+/);
    // ISOLINUX puts BOOT_IMAGE first; QEMU was given no -kernel, so the firmware loaded it from the CD.
    assert.equal(cmdline[0], 'BOOT_IMAGE=/boot/vmlinuz');
    assert.ok(cmdline.includes(MARKER), cmdline.join(' '));
    // Each CD drive with the volume id from its primary volume descriptor (sector 16, bytes 40-71); the test bed's
    // own drive is empty.
    const drives = await guestShell('for d in /dev/sr*; do printf "%s " $d; dd if=$d bs=2048 skip=16 count=1 2>/dev/null | dd bs=1 skip=40 count=32 2>/dev/null; echo; done');
    const cd = new RegExp(`^(/dev/sr\\d+) ${VOLUME_ID} *$`, 'm').exec(drives);
    assert.ok(cd, `the guest sees the boot CD: ${drives}`);
    const cfg = await guestShell(`mkdir -p /mnt/cd && mount -t iso9660 -o ro ${cd[1]} /mnt/cd && cat /mnt/cd/isolinux/isolinux.cfg`);
    assert.equal(cfg, iso.isolinuxCfg);
  });
});

const r2 = (n: number) => Math.round(n * 100) / 100;
