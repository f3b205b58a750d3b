import { spawn, ChildProcess } from 'node:child_process';
import { Readable, Writable } from 'node:stream';
import { statSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { v1, PortholeError, Stream } from '@porthole/protocol';
import { Policy } from './policy';
import { UserDb } from './users';
import { AuditLogger } from './audit';

const E = v1.ErrorCode;
/** After SIGTERM (timeout, cancel), the group gets this long before SIGKILL. */
const KILL_GRACE_MS = 2000;
/** After the main process exits, output still buffered in pipes gets this long to arrive. */
const PIPE_GRACE_MS = 2000;

export interface ExecContext {
  policy: Policy;
  users: UserDb;
  log: AuditLogger;
  running: { count: number };
}

function signalName(sig: string | undefined): NodeJS.Signals {
  const name = (sig || 'SIGTERM').toUpperCase();
  const full = (name.startsWith('SIG') ? name : `SIG${name}`) as NodeJS.Signals;
  if (!(full in osConstants.signals)) throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, `unknown signal ${sig}`);
  return full;
}

function killGroup(child: ChildProcess, sig: NodeJS.Signals): void {
  if (!child.pid) return;
  try {
    process.kill(-child.pid, sig); // the whole process group (spawned detached)
  } catch {
    try {
      child.kill(sig);
    } catch {
      // already gone
    }
  }
}

/** Resolves when a full stdin pipe takes more, or when it is gone (the process stopped reading). */
function writable(pipe: Writable): Promise<void> {
  if (pipe.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pipe.off('drain', done).off('close', done).off('error', done);
      resolve();
    };
    pipe.on('drain', done).on('close', done).on('error', done);
  });
}

/** The requested directory (which must exist), else the user's home when it exists, else /. */
function workingDirectory(requested: Uint8Array | null | undefined, home: string | undefined): string {
  const isDir = (p: string) => {
    try {
      return statSync(p).isDirectory();
    } catch {
      return false;
    }
  };
  if (requested?.length) {
    const cwd = Buffer.from(requested).toString('utf8');
    if (!isDir(cwd)) throw new PortholeError(E.ERROR_CODE_NOT_FOUND, `working directory ${cwd} does not exist in the guest`, { path: requested });
    return cwd;
  }
  return home && isDir(home) ? home : '/';
}

/**
 * Run a command for the host. stdout and stderr are forwarded as they are
 * written; while the host has not granted credit the pipes are paused, so a
 * flood of output slows the process instead of filling the agent's memory.
 */
export async function runExec(ctx: ExecContext, req: v1.ExecRequest, stream: Stream): Promise<v1.ExecExit.$Properties> {
  ctx.policy.requireEnabled('exec');
  let argv: string[];
  if (req.shellCommand) {
    if (req.argv.length) throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, 'give either argv or a shell command, not both');
    argv = ['/bin/sh', '-c', req.shellCommand];
  } else {
    argv = req.argv.map((a) => Buffer.from(a).toString('utf8'));
  }
  if (!argv.length || !argv[0]) throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, 'empty command');
  const user = ctx.users.user(req.user);
  const gid = ctx.users.group(req.group) ?? user?.gid;
  ctx.policy.checkExec(req.shellCommand ? '/bin/sh' : argv[0], user?.name);
  const max = ctx.policy.config.exec.maxConcurrent;
  if (max > 0 && ctx.running.count >= max) {
    throw new PortholeError(E.ERROR_CODE_RESOURCE_EXHAUSTED, `${ctx.running.count} commands are already running (the guest owner's limit is ${max})`, {
      rule: `exec.max_concurrent = ${max}`,
    });
  }
  const env: NodeJS.ProcessEnv = req.clearEnv ? { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' } : { ...process.env };
  if (user) {
    env.HOME = user.home ?? env.HOME;
    env.USER = env.LOGNAME = user.name;
  }
  Object.assign(env, req.env);

  const cwd = workingDirectory(req.cwd, user?.home);

  ctx.running.count++;
  const started = Date.now();
  let child: ChildProcess;
  try {
    child = spawn(argv[0], argv.slice(1), {
      cwd,
      env,
      uid: user?.uid,
      gid,
      detached: true, // its own process group, so timeout and cancel reach grandchildren too
      stdio: [req.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
  } catch (err) {
    ctx.running.count--;
    throw PortholeError.from(err, `cannot run ${argv[0]}`);
  }
  // Listening before anything is awaited: a quick command may exit while execStarted is being sent.
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.once('exit', (c, s) => resolve([c, s])));
  const spawned = await new Promise<Error | null>((resolve) => {
    child.once('spawn', () => resolve(null));
    child.once('error', (err) => resolve(err));
  });
  if (spawned) {
    ctx.running.count--;
    const code = (spawned as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new PortholeError(E.ERROR_CODE_NOT_FOUND, `command not found in the guest: ${argv[0]}`);
    throw PortholeError.from(spawned, `cannot run ${argv[0]}`);
  }

  let timedOut = false;
  let cancelled = false;
  let killTimer: NodeJS.Timeout | undefined;
  const terminate = () => {
    killGroup(child, 'SIGTERM');
    killTimer ??= setTimeout(() => killGroup(child, 'SIGKILL'), KILL_GRACE_MS);
  };
  const timeout = req.timeoutMs ? setTimeout(() => { timedOut = true; terminate(); }, req.timeoutMs) : undefined;
  // The host vanished or reset the stream: nobody will read the output.
  const onAbort = () => { cancelled = true; terminate(); };
  stream.signal.addEventListener('abort', onAbort, { once: true });

  const forward = (pipe: Readable, fd: v1.OutputStream) =>
    new Promise<void>((resolve) => {
      pipe.on('data', (data: Buffer) => {
        pipe.pause();
        stream.send({ execOutput: { fd, data } }).then(() => pipe.resume(), () => { pipe.destroy(); resolve(); });
      });
      pipe.on('end', resolve);
      pipe.on('close', resolve);
      pipe.on('error', () => resolve());
    });
  const outputs = Promise.all([forward(child.stdout!, v1.OutputStream.OUTPUT_STDOUT), forward(child.stderr!, v1.OutputStream.OUTPUT_STDERR)]);

  // Messages from the host: stdin, signals, cancel.
  const inbound = (async () => {
    try {
      for await (const m of stream) {
        if (m.body === 'chunk' && child.stdin) {
          if (!child.stdin.write(Buffer.from(m.chunk!.data ?? []))) await writable(child.stdin);
        } else if (m.body === 'execSignal') {
          // A bad signal name is the host's mistake; the command and the stream go on.
          try {
            killGroup(child, signalName(m.execSignal!.signal ?? undefined));
          } catch (err) {
            ctx.log.warn('signal not delivered', { pid: child.pid, error: (err as Error).message });
          }
        } else if (m.body === 'cancel') {
          cancelled = true;
          terminate();
        }
      }
    } catch {
      // stream reset: handled by the abort listener
    } finally {
      child.stdin?.end();
    }
  })();
  child.stdin?.on('error', () => undefined); // the process may exit without reading stdin

  await stream.send({ execStarted: { pid: child.pid ?? 0 } }).catch(() => undefined);
  const [code, sig] = await exited;
  if (timeout) clearTimeout(timeout);
  // A timed-out or cancelled command goes with its whole group, even members that outlived it.
  if (timedOut || cancelled) killGroup(child, 'SIGKILL');
  ctx.running.count--;
  // Grandchildren may keep the pipes open: wait a little, then stop forwarding.
  const grace = setTimeout(() => { child.stdout?.destroy(); child.stderr?.destroy(); }, PIPE_GRACE_MS);
  await outputs;
  clearTimeout(grace);
  if (killTimer) clearTimeout(killTimer);
  stream.signal.removeEventListener('abort', onAbort);
  void inbound;
  return {
    exited: code !== null,
    code: code ?? 0,
    signal: sig ?? '',
    durationMs: Date.now() - started,
    timedOut,
    cancelled,
  };
}
