// libvirtd for the test bed, on machines without systemd (CI, these containers): started when
// nothing answers at qemu:///system, and restarted on request, the way an operator's init would.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { LibvirtError, Virsh } from '@porthole/libvirt';

const run = promisify(execFile);

/** The URI the test bed's domains live at. */
export const TESTBED_LIBVIRT_URI = 'qemu:///system';

const DAEMONS = [
  // virtlogd first: libvirtd hands QEMU's stdout/stderr to it, and `virsh start` fails without it.
  { name: 'virtlogd', binary: '/usr/sbin/virtlogd', pidFile: '/run/virtlogd.pid', deb: 'libvirt-daemon-system' },
  { name: 'libvirtd', binary: '/usr/sbin/libvirtd', pidFile: '/run/libvirtd.pid', deb: 'libvirt-daemon-system libvirt-daemon-driver-qemu' },
];
const LIBVIRTD = DAEMONS[1];
/** Serialises starting and restarting between test processes (several engineers share a machine). */
const LOCK_FILE = '/run/lock/porthole-testbed-libvirtd.lock';

function pidOf(pidFile: string): number | undefined {
  try {
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
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

/** Runs `script` under the test bed's libvirtd lock (flock from util-linux). */
async function locked(script: string): Promise<void> {
  await run('flock', ['-w', '120', LOCK_FILE, 'sh', '-c', script]).catch((err: { stderr?: string; message: string }) => {
    throw new Error(`starting libvirt for the test bed failed: ${(err.stderr || err.message).trim()}`);
  });
}

/** Starts each daemon whose pid file names no live process (the shell part, run under the lock). */
const START_MISSING = DAEMONS.map((d) => `[ -f ${d.pidFile} ] && kill -0 "$(cat ${d.pidFile})" 2>/dev/null || ${d.binary} -d`).join('\n');

/**
 * Makes sure libvirtd (and virtlogd) answer at qemu:///system: when nothing does, starts them as
 * daemons (`-d`), which outlive the test run so other users' domains on this machine are unaffected.
 */
export async function ensureLibvirtd(log: (m: string) => void = () => undefined): Promise<void> {
  if (await answers()) return;
  for (const d of DAEMONS) {
    if (!existsSync(d.binary)) throw new Error(`the test bed needs ${d.binary}: install ${d.deb} (scripts/setup.sh does)`);
  }
  log('starting virtlogd and libvirtd');
  await locked(START_MISSING);
  await waitUntilAnswering(30_000);
}

/**
 * Stops libvirtd (SIGTERM) and starts it again, as `systemctl restart libvirtd` would. Running domains keep
 * running (their QEMU processes do not belong to libvirtd) and the new libvirtd takes them over; for the moment
 * between, virsh calls of everyone on this machine fail with "Failed to connect socket".
 */
export async function restartLibvirtd(): Promise<void> {
  const pid = pidOf(LIBVIRTD.pidFile);
  if (pid === undefined) throw new Error(`no libvirtd runs from ${LIBVIRTD.pidFile} (one started by systemd is restarted with systemctl)`);
  await locked(`kill -TERM ${pid}; i=0; while kill -0 ${pid} 2>/dev/null; do i=$((i+1)); [ $i -gt 300 ] && { echo "libvirtd ${pid} did not stop within 30 s" >&2; exit 1; }; sleep 0.1; done\n${START_MISSING}`);
  await waitUntilAnswering(30_000);
}
