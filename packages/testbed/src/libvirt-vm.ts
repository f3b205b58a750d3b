// The test guest as a libvirt domain on the machine's real libvirtd (qemu:///system): the same
// kernel, initramfs and agent as bootVm, with the channels and drives a libvirt host gives a VM.
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { formatLibvirtTarget, LibvirtError, Virsh } from '@porthole/libvirt';
import { ConsoleVm } from './console';
import { AGENT_PORT_NAME, QGA_PORT_NAME } from './guest-files';
import { buildGuestInitramfs, GuestOptions } from './guest-image';
import { ensureLibvirtd, processAlive, TESTBED_LIBVIRT_URI } from './libvirtd';
import { GUEST_KERNEL_CMDLINE } from './vm';

/** Test-bed domains are named porthole-tb-PID-N-RANDOM, so a later run can tell which ones a dead run left. */
const NAME_PREFIX = 'porthole-tb-';
let domainCount = 0;

export interface LibvirtBootOptions extends GuestOptions {
  memoryMb?: number;
  cpus?: number;
  /**
   * Boot through the firmware (no <kernel>/<initrd>): the guest comes from a boot device that transformXml
   * adds (e.g. boot-iso's https CD-ROM); agent, agentConfig, files then belong on that medium.
   */
  firmwareBoot?: boolean;
  /** Rewrites the generated domain XML before it is started (e.g. `porthole boot-iso`). */
  transformXml?: (xml: string) => string | Promise<string>;
  /** `virsh create` a transient domain instead of `virsh define` + `virsh start` (which `virsh start` can start again). */
  transient?: boolean;
  /** Wait for this console line before returning (default: the test bed's "services started"). */
  readyPattern?: RegExp;
  bootTimeoutMs?: number;
  log?: (message: string) => void;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;');

/**
 * The test bed's domain: TCG (`type='qemu'`, KVM hangs on these machines), the agent's and qemu-guest-agent's
 * virtio channels as unix sockets libvirt places, an empty IDE CD-ROM drive (for `virsh change-media`), a
 * virtio-scsi controller (a CD-ROM can be hot-plugged onto it with `attach-device --live`), the serial console in
 * a file.
 */
export function testbedDomainXml(o: { name: string; consoleLog: string; memoryMb?: number; cpus?: number; kernel?: string; initrd?: string }): string {
  const boot = o.kernel && o.initrd
    ? `    <kernel>${esc(o.kernel)}</kernel>\n    <initrd>${esc(o.initrd)}</initrd>\n    <cmdline>${esc(GUEST_KERNEL_CMDLINE)}</cmdline>\n`
    : "    <boot dev='hd'/>\n";
  return `<domain type='qemu'>
  <name>${esc(o.name)}</name>
  <description>Porthole test bed VM</description>
  <memory unit='MiB'>${o.memoryMb ?? 1536}</memory>
  <vcpu>${o.cpus ?? 2}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
${boot}  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='maximum'/>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <controller type='scsi' model='virtio-scsi'/>
    <serial type='file'>
      <source path='${esc(o.consoleLog)}'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='${AGENT_PORT_NAME}'/>
    </channel>
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='${QGA_PORT_NAME}'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

/** libvirt's log of the domain's QEMU (command line, QEMU's stderr); libvirt keeps it after the domain is gone. */
const qemuLogPath = (name: string) => `/var/log/libvirt/qemu/${name}.log`;

/** A running test-bed domain. Always call shutdown() (it destroys and undefines it and removes its files). */
export class LibvirtVm extends ConsoleVm {
  constructor(
    readonly name: string,
    readonly virsh: Virsh,
    readonly dir: string,
    consoleLogPath: string,
    readonly persistent: boolean,
  ) {
    super(consoleLogPath);
  }

  /** The domain as a broker target. */
  get target(): string {
    return formatLibvirtTarget({ domain: this.name });
  }

  /** Whether its QEMU process runs (libvirt's pid file for the domain names a live process). */
  get running(): boolean {
    try {
      return processAlive(Number(readFileSync(`/run/libvirt/qemu/${this.name}.pid`, 'utf8')));
    } catch {
      return false;
    }
  }

  /** `virsh CMD DOMAIN ARGS…`; its output. */
  domain(command: string, ...args: string[]): Promise<string> {
    return this.virsh.run([command, this.name, ...args], { domain: this.name });
  }

  /** Destroys the domain (when it runs), undefines it (when persistent) and removes its files. */
  async shutdown(): Promise<void> {
    await removeDomain(this.virsh, this.name, this.persistent);
    if (!process.env.PORTHOLE_KEEP_VM) rmSync(this.dir, { recursive: true, force: true });
  }
}

async function removeDomain(virsh: Virsh, name: string, persistent: boolean): Promise<void> {
  const ignoreGone = (err: unknown) => {
    // Already stopped or gone: nothing to do.
    if (!(err instanceof LibvirtError) || (err.kind !== 'no-domain' && !/not running/i.test(err.message))) throw err;
  };
  await virsh.run(['destroy', name], { domain: name }).catch(ignoreGone);
  if (persistent) await virsh.run(['undefine', name], { domain: name }).catch(ignoreGone);
  rmSync(qemuLogPath(name), { force: true });
}

/** Removes test-bed domains (and their directories) whose test process has died. */
async function removeAbandonedDomains(virsh: Virsh, log: (m: string) => void): Promise<void> {
  const names = (await virsh.run(['list', '--all', '--name'])).split('\n').map((n) => n.trim()).filter((n) => n.startsWith(NAME_PREFIX));
  for (const name of names) {
    const pid = Number(name.slice(NAME_PREFIX.length).split('-')[0]);
    if (!pid || processAlive(pid)) continue;
    log(`removing ${name}, left by test process ${pid}`);
    const persistent = !/Persistent:\s+no/.test(await virsh.run(['dominfo', name], { domain: name }).catch(() => ''));
    await removeDomain(virsh, name, persistent).catch(() => undefined);
    for (const entry of readdirSync(tmpdir()).filter((e) => e.startsWith(`${name}-`))) rmSync(join(tmpdir(), entry), { recursive: true, force: true });
  }
}

/**
 * Boots the test guest as a libvirt domain on qemu:///system, starting libvirtd first when none runs. The kernel and
 * initramfs are copied into the domain's own directory: libvirt hands them to QEMU's user (libvirt-qemu) for the run.
 */
export async function bootLibvirtVm(options: LibvirtBootOptions = {}): Promise<LibvirtVm> {
  const log = options.log ?? (() => undefined);
  if (options.firmwareBoot && (options.agent || options.agentConfig !== undefined || options.bootScript || options.files)) {
    throw new Error('bootLibvirtVm: with firmwareBoot, agent, agentConfig, bootScript and files belong on the boot medium (buildBootIso)');
  }
  await ensureLibvirtd(log);
  // Calls made while another test restarts libvirtd wait for it.
  const virsh = new Virsh({ uri: TESTBED_LIBVIRT_URI, waitForLibvirtdMs: 30_000 });
  await removeAbandonedDomains(virsh, log);
  const name = `${NAME_PREFIX}${process.pid}-${++domainCount}-${randomBytes(3).toString('hex')}`;
  const dir = mkdtempSync(join(tmpdir(), `${name}-`));
  // QEMU runs as libvirt-qemu: it must reach the files in here.
  chmodSync(dir, 0o755);
  const consoleLog = join(dir, 'console.log');
  let kernel: string | undefined;
  let initrd: string | undefined;
  if (!options.firmwareBoot) {
    initrd = join(dir, 'initramfs.cpio');
    const built = buildGuestInitramfs(options, initrd, log);
    kernel = join(dir, 'vmlinuz');
    copyFileSync(built.kernel, kernel);
  }
  let xml = testbedDomainXml({ name, consoleLog, memoryMb: options.memoryMb, cpus: options.cpus, kernel, initrd });
  if (options.transformXml) xml = await options.transformXml(xml);
  const xmlFile = join(dir, 'domain.xml');
  writeFileSync(xmlFile, xml);
  const vm = new LibvirtVm(name, virsh, dir, consoleLog, !options.transient);
  try {
    log(`starting libvirt domain ${name} (TCG)`);
    if (options.transient) await virsh.run(['create', xmlFile]);
    else {
      await virsh.run(['define', xmlFile]);
      await virsh.run(['start', name], { domain: name });
    }
    await vm.waitForConsole(options.readyPattern ?? /porthole-testbed: services started/, options.bootTimeoutMs ?? 120000);
  } catch (err) {
    const qemuLog = qemuLogPath(name);
    const tail = existsSync(qemuLog) ? `\n${qemuLog}:\n${readFileSync(qemuLog, 'utf8').split('\n').slice(-15).join('\n')}` : '';
    await vm.shutdown();
    throw new Error(`${(err as Error).message}${tail}`);
  }
  log('guest booted');
  return vm;
}
