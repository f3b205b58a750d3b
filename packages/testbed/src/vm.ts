import { spawn, ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectQmpSocket, QmpConnection } from '@porthole/media';
import { ConsoleVm } from './console';
import { AGENT_PORT_NAME, QGA_PORT_NAME, rawPortName } from './guest-files';
import { buildGuestInitramfs, CACHE_DIR, GuestOptions } from './guest-image';
import { guestPlatform } from './guest-arch';

export { GUEST_KERNEL_CMDLINE } from './guest-arch';

export interface BootOptions extends GuestOptions {
  memoryMb?: number;
  cpus?: number;
  /** Extra virtio-serial ports for raw throughput measurements (at least one per entry of rawTools). */
  rawPorts?: number;
  /** The Porthole agent's port (default true); without it, a VM that `porthole agent install` can hot-plug it into. */
  agentPort?: boolean;
  /** A port for qemu-guest-agent (Debian's qemu-ga runs in the guest on it). */
  qemuGuestAgent?: boolean;
  cdrom?: string;
  floppy?: string;
  /** More QEMU arguments, as they are. */
  qemuArgs?: string[];
  /**
   * Boot through the firmware from a device in qemuArgs (e.g. a CD with bootindex=0) instead of loading the test
   * bed's kernel and initramfs directly; the guest options then live on that medium (see buildBootIso).
   */
  firmwareBoot?: boolean;
  /** Wait for this console line before returning (default: the test bed's "services started"). */
  readyPattern?: RegExp;
  bootTimeoutMs?: number;
  /** Progress messages (e.g. for the demo). */
  log?: (message: string) => void;
}

/** A running test VM. Always call shutdown() (it also removes the VM's files). */
export class Vm extends ConsoleVm {
  private exited: Promise<number | null>;
  private qmpConnection?: QmpConnection;

  constructor(
    readonly dir: string,
    private readonly child: ChildProcess,
    readonly agentSocketPath: string,
    readonly qmpSocketPath: string,
    readonly rawSocketPaths: string[],
    readonly qgaSocketPath: string | undefined,
    consoleLogPath: string,
  ) {
    super(consoleLogPath);
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  /** The agent's channel as a broker target string. */
  get target(): string {
    return `unix:${this.agentSocketPath}`;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async qmp(): Promise<QmpConnection> {
    this.qmpConnection ??= await connectQmpSocket(this.qmpSocketPath);
    return this.qmpConnection;
  }

  /** Stop QEMU (QMP quit, then SIGKILL after a timeout) and remove the VM's directory. */
  async shutdown(timeoutMs = 10000): Promise<void> {
    if (this.running) {
      try {
        await Promise.race([(await this.qmp()).execute('quit'), new Promise((r) => setTimeout(r, 2000))]);
      } catch {
        // QMP unavailable: kill below
      }
      const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
      if (this.running) this.child.kill('SIGTERM');
      await this.exited;
      clearTimeout(timer);
    }
    this.qmpConnection?.close();
    if (!process.env.PORTHOLE_KEEP_VM) rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Boot a throwaway VM under TCG (KVM hangs on these machines, see
 * shared/TESTBED.md) with the agent's virtio-serial port, a QMP socket and the
 * options' extra ports and drives; an x86-64 guest unless options.arch says arm64.
 */
export async function bootVm(options: BootOptions = {}): Promise<Vm> {
  const log = options.log ?? (() => undefined);
  if (options.firmwareBoot && (options.agent || options.agentConfig !== undefined || options.bootScript || options.files)) {
    throw new Error('bootVm: with firmwareBoot, agent, agentConfig, bootScript and files belong on the boot medium (buildBootIso)');
  }
  const platform = guestPlatform(options.arch ?? 'x64', CACHE_DIR);
  const missing: string[] = [];
  const rawPorts = Math.max(options.rawPorts ?? 0, options.rawTools?.length ?? 0);
  if (rawPorts && !platform.hasNode) missing.push('node for the raw-port tool');
  if (options.qemuGuestAgent && !platform.hasQemuGuestAgent) missing.push('qemu-guest-agent');
  if (options.floppy && !platform.floppyDrive) missing.push('floppy drive');
  if (missing.length) throw new Error(`bootVm: the ${platform.arch} guest has no ${missing.join(', no ')}`);
  const dir = mkdtempSync(join(tmpdir(), 'porthole-vm-'));
  let kernelArgs: string[] = [];
  if (!options.firmwareBoot) {
    const initramfs = join(dir, 'initramfs.cpio');
    const { kernel } = buildGuestInitramfs(options, initramfs, log);
    kernelArgs = ['-kernel', kernel, '-initrd', initramfs, '-append', platform.kernelCmdline];
  }

  const agentSock = join(dir, 'agent.sock');
  const qmpSock = join(dir, 'qmp.sock');
  const consoleLog = join(dir, 'console.log');
  const args = [
    '-accel', 'tcg', ...platform.machineArgs, '-smp', String(options.cpus ?? 2), '-m', String(options.memoryMb ?? 1536),
    '-display', 'none', '-monitor', 'none', '-no-reboot', '-nodefaults',
    '-chardev', `file,id=console,path=${consoleLog}`, '-serial', 'chardev:console',
    ...kernelArgs,
    '-qmp', `unix:${qmpSock},server=on,wait=off`,
    '-device', 'virtio-serial-pci,id=vser0',
  ];
  if (options.agentPort ?? true) {
    args.push('-chardev', `socket,id=agent,path=${agentSock},server=on,wait=off`, '-device', `virtserialport,bus=vser0.0,chardev=agent,name=${AGENT_PORT_NAME}`);
  }
  const rawSockets: string[] = [];
  for (let i = 0; i < rawPorts; i++) {
    const path = join(dir, `raw${i}.sock`);
    rawSockets.push(path);
    args.push('-chardev', `socket,id=raw${i},path=${path},server=on,wait=off`, '-device', `virtserialport,bus=vser0.0,chardev=raw${i},name=${rawPortName(i)}`);
  }
  let qgaSock: string | undefined;
  if (options.qemuGuestAgent) {
    qgaSock = join(dir, 'qga.sock');
    args.push('-chardev', `socket,id=qga,path=${qgaSock},server=on,wait=off`, '-device', `virtserialport,bus=vser0.0,chardev=qga,name=${QGA_PORT_NAME}`);
  }
  // A CD drive is always there (empty unless given), so media can be inserted later over QMP.
  args.push(...platform.cdDrive(options.cdrom));
  if (options.floppy) args.push(...platform.floppyDrive!(options.floppy));
  args.push(...(options.qemuArgs ?? []));

  log(`starting QEMU (TCG, ${platform.arch})`);
  const child = spawn(platform.qemu, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  const spawnError = await new Promise<Error | null>((resolve) => {
    child.once('spawn', () => resolve(null));
    child.once('error', resolve);
  });
  if (spawnError) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`cannot start ${platform.qemu}: ${spawnError.message} (install ${platform.qemuPackage})`);
  }
  const vm = new Vm(dir, child, agentSock, qmpSock, rawSockets, qgaSock, consoleLog);
  try {
    await vm.waitForConsole(options.readyPattern ?? /porthole-testbed: services started/, options.bootTimeoutMs ?? 120000);
  } catch (err) {
    const message = `${(err as Error).message}${stderr ? `\nQEMU stderr: ${stderr.trim()}` : ''}`;
    await vm.shutdown();
    throw new Error(message);
  }
  log('guest booted');
  return vm;
}
