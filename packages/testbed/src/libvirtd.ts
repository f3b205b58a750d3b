// libvirtd for the test bed, on machines without systemd (CI, these containers): started when
// nothing answers at qemu:///system, and restarted on request, the way an operator's init would.
import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { LibvirtError, Virsh } from '@porthole/libvirt';

const run = promisify(execFile);

/** The URI the test bed's domains live at. */
export const TESTBED_LIBVIRT_URI = 'qemu:///system';

const DAEMONS = [
  // virtlogd first: libvirtd hands QEMU's stdout/stderr to it, and `virsh start` fails without it.
  { binary: '/usr/sbin/virtlogd', pidFile: '/run/virtlogd.pid', deb: 'libvirt-daemon-system' },
  { binary: '/usr/sbin/libvirtd', pidFile: '/run/libvirtd.pid', deb: 'libvirt-daemon-system libvirt-daemon-driver-qemu' },
];
const LIBVIRTD = DAEMONS[1];
/** Serialises starting and restarting between test processes (several engineers share a machine). */
const LOCK_FILE = '/run/lock/porthole-testbed-libvirtd.lock';

/** Whether a process of that pid exists. */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The live process a daemon's pid file names. */
function pidOf(pidFile: string): number | undefined {
  let pid: number;
  try {
    pid = Number(readFileSync(pidFile, 'utf8').trim());
  } catch {
    return undefined;
  }
  return pid > 0 && processAlive(pid) ? pid : undefined;
}

async function answers(): Promise<boolean> {
  try {
    await new Virsh({ uri: TESTBED_LIBVIRT_URI }).run(['uri']);
    return true;
  } catch (err) {
    if (err instanceof LibvirtError && err.kind === 'no-libvirtd') return false;
    throw err;
  }
}

async function waitUntilAnswering(timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await answers())) {
    if (Date.now() > deadline) throw new Error(`libvirtd did not answer at ${TESTBED_LIBVIRT_URI} within ${timeoutMs} ms`);
    await sleep(100);
  }
}

/** Runs `fn` holding the test bed's libvirtd lock (flock from util-linux, held by a child until `fn` ends). */
async function locked<T>(fn: () => Promise<T>): Promise<T> {
  const holder = spawn('flock', ['-w', '120', LOCK_FILE, 'sh', '-c', 'echo locked; exec cat >/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  holder.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<void>((resolve) => holder.once('close', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    holder.stdout.once('data', () => resolve());
    holder.once('error', (err) => reject(new Error(`the test bed's libvirtd lock needs flock (util-linux): ${err.message}`)));
    void exited.then(() => reject(new Error(`could not take ${LOCK_FILE}: ${stderr.trim() || 'flock ended'}`)));
  });
  try {
    return await fn();
  } finally {
    holder.stdin.end();
    await exited;
  }
}

/** Starts each daemon whose pid file names no live process (`-d`: they outlive the test run). */
async function startMissing(): Promise<void> {
  for (const d of DAEMONS) {
    if (pidOf(d.pidFile) !== undefined) continue;
    await run(d.binary, ['-d']).catch((err: { stderr?: string; message: string }) => {
      throw new Error(`${d.binary} -d failed: ${(err.stderr || err.message).trim()}`);
    });
  }
}

/**
 * Makes sure libvirtd (and virtlogd) answer at qemu:///system: when nothing does, starts them as daemons, which
 * outlive the test run so that other users' domains on this machine are unaffected.
 */
export async function ensureLibvirtd(log: (m: string) => void = () => undefined): Promise<void> {
  if (await answers()) return;
  for (const d of DAEMONS) {
    if (!existsSync(d.binary)) throw new Error(`the test bed needs ${d.binary}: install ${d.deb} (scripts/setup.sh does)`);
  }
  await locked(async () => {
    if (await answers()) return;
    log('starting virtlogd and libvirtd');
    await startMissing();
    await waitUntilAnswering(30_000);
  });
}

/**
 * Stops libvirtd (SIGTERM), runs `whileStopped`, and starts libvirtd again, as `systemctl restart libvirtd` would.
 * Running domains keep running (their QEMU processes do not belong to libvirtd) and the new libvirtd takes them
 * over; meanwhile virsh calls of everyone on this machine fail with "Failed to connect socket".
 */
export async function restartLibvirtd(whileStopped: () => Promise<void> = async () => undefined): Promise<void> {
  await locked(async () => {
    const pid = pidOf(LIBVIRTD.pidFile);
    if (pid === undefined) throw new Error(`no libvirtd runs from ${LIBVIRTD.pidFile} (one started by systemd is restarted with systemctl)`);
    process.kill(pid, 'SIGTERM');
    for (let i = 0; processAlive(pid); i++) {
      if (i > 300) throw new Error(`libvirtd ${pid} did not stop within 30 s of SIGTERM`);
      await sleep(100);
    }
    try {
      await whileStopped();
    } finally {
      await startMissing();
      await waitUntilAnswering(30_000);
    }
  });
}
