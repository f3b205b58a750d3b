import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { GuestArch } from './guest-arch';

const AGENT = join(__dirname, '..', '..', 'agent');
const AGENT_DIST = join(AGENT, 'dist');

/** The agent bundle `npm run build` makes (run with node in the guest). */
export function agentBundlePath(): string {
  const path = join(AGENT_DIST, 'porthole-agent.bundle.cjs');
  if (!existsSync(path)) throw new Error(`${path} is missing: run npm run build first`);
  return path;
}

/** The single executable `npm run build:sea` makes, when it exists. */
export function agentExecutablePath(): string | undefined {
  const path = join(AGENT_DIST, 'porthole-agent');
  return existsSync(path) ? path : undefined;
}

/**
 * The agent's single executable for a guest CPU, with porthole-spawn beside it. x64: the one
 * `npm run build` makes. arm64: built here from that build's bundle, as `npm run build:arm64`
 * does (about 20 s: the arm64 node writes the blob under qemu-user), and kept in
 * dist/linux-arm64/ until one of its inputs changes, so `npm run build` stays as fast as it was.
 */
export function agentExecutableFor(arch: GuestArch): string {
  if (arch === 'x64') {
    const exe = agentExecutablePath();
    if (!exe) throw new Error(`${join(AGENT_DIST, 'porthole-agent')} is missing: run npm run build first`);
    return exe;
  }
  const bundle = agentBundlePath();
  const dir = join(AGENT_DIST, `linux-${arch}`);
  const exe = join(dir, 'porthole-agent');
  const inputs = [bundle, join(AGENT, 'native', 'porthole-spawn.c'), join(AGENT, 'platforms', `linux-${arch}`, 'package-lock.json'),
    ...['sea.mjs', 'spawn-helper.mjs', 'targets.mjs'].map((s) => join(AGENT, 'scripts', s))];
  const h = createHash('sha256');
  for (const input of inputs) h.update(input).update(readFileSync(input));
  const key = h.digest('hex');
  const stamp = join(dir, 'built-from.sha256');
  const built = existsSync(stamp) && readFileSync(stamp, 'utf8') === key && existsSync(exe) && existsSync(join(dir, 'porthole-spawn'));
  if (!built) {
    const run = (script: string, args: string[]) => {
      try {
        execFileSync(process.execPath, [join(AGENT, 'scripts', script), '--arch', arch, ...args], { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
      } catch (err) {
        const e = err as Error & { stderr?: string };
        throw new Error(`building the ${arch} agent: ${script} failed: ${(e.stderr || e.message).trim()}`);
      }
    };
    run('spawn-helper.mjs', []);
    run('sea.mjs', ['--bundle', bundle]);
    writeFileSync(stamp, key);
  }
  return exe;
}
