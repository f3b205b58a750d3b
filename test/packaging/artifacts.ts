import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { agentExecutableFor } from '@porthole/testbed';

const run = promisify(execFile);
export const ROOT = join(__dirname, '..', '..');
export const SEA = join(ROOT, 'packages/agent/dist/porthole-agent');
export const AGENT_VERSION = (JSON.parse(readFileSync(join(ROOT, 'packages/agent/package.json'), 'utf8')) as { version: string }).version;

/** Run a command; on failure the error carries its stderr (the cause). */
export async function sh(cmd: string, args: string[], opts: { cwd?: string; timeout?: number } = {}): Promise<string> {
  try {
    const { stdout } = await run(cmd, args, { cwd: opts.cwd ?? ROOT, timeout: opts.timeout ?? 300_000, maxBuffer: 64 * 2 ** 20 });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string; stdout?: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${(e.stderr || e.stdout || e.message).trim()}`);
  }
}

let seaBuilt: Promise<string> | undefined;
/** The single executable, built once per test run exactly as `npm run build:sea` does. */
export function buildSea(): Promise<string> {
  seaBuilt ??= sh(process.execPath, [join(ROOT, 'packages/agent/scripts/sea.mjs')]).then(() => SEA);
  return seaBuilt;
}

/**
 * `node installers/build.mjs deb|tar --arch ARCH` into outDir; returns the artifact's path. x64 packages the
 * executable built as `npm run build:sea` does; arm64 the test bed's linux-arm64 build (cached until its inputs change).
 */
export async function buildInstaller(kind: 'deb' | 'tar', outDir: string, version = AGENT_VERSION, arch: 'x64' | 'arm64' = 'x64'): Promise<string> {
  if (arch === 'x64') await buildSea();
  else agentExecutableFor(arch);
  await sh(process.execPath, [join(ROOT, 'installers/build.mjs'), kind, '--arch', arch, '--version', version, '--out', outDir]);
  const name = kind === 'deb' ? `porthole-agent_${version}_${arch === 'x64' ? 'amd64' : arch}.deb` : `porthole-agent-${version}-linux-${arch}.tar.gz`;
  const path = join(outDir, name);
  if (!existsSync(path)) throw new Error(`installers/build.mjs did not produce ${name} (found: ${readdirSync(outDir).join(', ')})`);
  return path;
}

let hostSeaBuilt: Promise<void> | undefined;
/** The host package (`porthole`: broker daemon and CLI) into outDir, its single executable built once per test run. */
export async function buildHostInstaller(outDir: string, version = AGENT_VERSION): Promise<string> {
  hostSeaBuilt ??= sh(process.execPath, [join(ROOT, 'packages/broker/scripts/sea.mjs')]).then(() => undefined);
  await hostSeaBuilt;
  await sh(process.execPath, [join(ROOT, 'installers/build.mjs'), 'host-deb', '--version', version, '--out', outDir]);
  const path = join(outDir, `porthole_${version}_amd64.deb`);
  if (!existsSync(path)) throw new Error(`installers/build.mjs did not produce porthole_${version}_amd64.deb (found: ${readdirSync(outDir).join(', ')})`);
  return path;
}

/** Run a command chrooted into a guest root, with a root shell's plain environment (not this test's). */
export function chroot(root: string, args: string[]): Promise<string> {
  return sh('env', ['-i', 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'HOME=/root', 'LANG=C.UTF-8', 'chroot', root, ...args]);
}
