import { ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { UnixSocketConnector } from '@porthole/transport';
import { Agent, AgentConfig, createAuditLogger } from '@porthole/agent';
import { agentTestConfig } from '../agent/harness';

/**
 * The real agent serving a Unix socket, as a guest behind QEMU's chardev socket
 * looks to the broker: the broker connects to `target`.
 */
export interface Guest {
  dir: string;
  /** Where tests write in the "guest". */
  root: string;
  target: string;
  config: AgentConfig;
  agent: Agent;
  stop(): Promise<void>;
}

export async function startGuest(tune: (config: AgentConfig, root: string) => void = () => undefined): Promise<Guest> {
  const { dir, root, config } = agentTestConfig('porthole-broker-', tune);
  const sock = join(dir, 'vm.sock');
  const log = createAuditLogger({ silent: true, stream: new PassThrough().resume(), level: 'info' });
  const connector = new UnixSocketConnector(sock, { listen: true });
  const agent = new Agent({ connector, config, log });
  const running = agent.run().catch(() => undefined);
  // The socket exists once the agent waits for its first connection.
  for (let i = 0; i < 100 && !(await exists(sock)); i++) await new Promise((r) => setTimeout(r, 10));
  return {
    dir, root, config, agent, target: `unix:${sock}`,
    async stop() {
      agent.stop();
      connector.close();
      await running;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function exists(path: string): Promise<boolean> {
  const { access } = await import('node:fs/promises');
  return access(path).then(() => true, () => false);
}

const REPO = join(__dirname, '../..');

export interface CliRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

/** Start `porthole ARGS` from the TypeScript sources. */
export function spawnPorthole(args: string[], env: NodeJS.ProcessEnv = {}): ChildProcessWithoutNullStreams {
  return spawn(process.execPath, ['--conditions=porthole-src', '--require', 'tsx/cjs', join(REPO, 'packages/broker/src/cli.ts'), ...args], {
    cwd: REPO, env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'],
  });
}

/** `porthole ARGS` run to its end (stdin: a buffer, or left open). */
export function porthole(args: string[], opts: { stdin?: Buffer | string; env?: NodeJS.ProcessEnv; onStdout?: (b: Buffer) => void; onSpawn?: (pid: number) => void } = {}): Promise<CliRun> {
  const child = spawnPorthole(args, opts.env);
  opts.onSpawn?.(child.pid!);
  const out: Buffer[] = [];
  let err = '';
  child.stdout.on('data', (b: Buffer) => { out.push(b); opts.onStdout?.(b); });
  child.stderr.on('data', (b: Buffer) => { err += b.toString(); });
  if (opts.stdin !== undefined) child.stdin.end(opts.stdin);
  return new Promise((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal, stdout: Buffer.concat(out), stderr: err }));
  });
}

export interface Serving {
  address: string;
  token?: string;
  stdout: () => string;
  stderr: () => string;
  /** Every address it printed (one per --listen). */
  addresses: string[];
  pid: number;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** `porthole serve ARGS` as its own process, until it prints its address. */
export async function serve(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Serving> {
  const child = spawnPorthole(['serve', ...args], env);
  let out = '';
  let err = '';
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const listeners = Math.max(1, args.filter((a) => a === '--listen').length);
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString();
      if ((out.match(/listening on \S+\n/g) ?? []).length >= listeners) resolve();
    });
    void exited.then((code) => reject(new Error(`porthole serve exited ${code}: ${err}`)));
  });
  return {
    address: /listening on (\S+)/.exec(out)![1],
    addresses: [...out.matchAll(/listening on (\S+)/g)].map((m) => m[1]),
    pid: child.pid!,
    token: /bearer token \(shown once, not logged\): (\S+)/.exec(out)?.[1],
    stdout: () => out,
    stderr: () => err,
    async stop(signal = 'SIGTERM') {
      child.kill(signal);
      return exited;
    },
  };
}
