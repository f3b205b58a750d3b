// Helpers for the payload media tests: temp dirs, running the real readers, a QEMU with QMP.
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'porthole-media-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Runs a reader; returns stdout and stderr together with its exit code (never throws on a non-zero exit). */
export function run(cmd: string, args: string[]): { out: string; err: string; code: number } {
  try {
    const out = execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } });
    return { out, err: '', code: 0 };
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string; status?: number };
    return { out: x.stdout ?? '', err: x.stderr ?? '', code: x.status ?? -1 };
  }
}

/** Like run, but a non-zero exit fails the test with the tool's stderr. */
export function ok(cmd: string, args: string[]): string {
  const r = run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.err}`);
  return r.out;
}

/** The raw bytes a reader prints (for file contents). */
export function okBytes(cmd: string, args: string[]): Buffer {
  return execFileSync(cmd, args, { maxBuffer: 64 * 1024 * 1024, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } });
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

export interface QemuVm {
  qmpSocket: string;
  stop: () => Promise<void>;
}

/** Starts a paused QEMU (TCG, no defaults) with the given extra arguments and a QMP socket. */
export async function startQemu(dir: string, extraArgs: string[], qemu = 'qemu-system-x86_64'): Promise<QemuVm> {
  const qmpSocket = join(dir, 'qmp.sock');
  const child: ChildProcess = spawn(
    qemu,
    ['-accel', 'tcg', '-nodefaults', '-nographic', '-S', '-qmp', `unix:${qmpSocket},server=on,wait=off`, ...extraArgs],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const deadline = Date.now() + 15_000;
  while (!existsSync(qmpSocket)) {
    if (child.exitCode !== null) throw new Error(`qemu exited ${child.exitCode}: ${stderr}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`qemu did not create its QMP socket: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    qmpSocket,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}
