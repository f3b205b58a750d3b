import { Readable, Writable } from 'node:stream';
import { statSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { v1, PortholeError, Stream, bytesOf } from '@porthole/protocol';
import { Policy } from './policy';
import { UserDb } from './users';
import { AuditLogger } from './audit';
import { ExitStatus, Spawned, Spawner } from './spawner';
import { shellArgv } from './shell';
import { checkWindowsExec } from './windows/exec';
import { killProcessTree } from './windows/processes';

const E = v1.ErrorCode;
/** After SIGTERM (timeout, cancel), the group gets this long before SIGKILL. */
const KILL_GRACE_MS = 2000;
/** After the main process exits, output still buffered in pipes gets this long to arrive. */
const PIPE_GRACE_MS = 2000;
/**
 * What the agent's launcher sets to tune the agent's own process (installers/porthole-agent-env.sh):
 * a command run through the agent must not get them (a Node program would run without its JIT).
 */
export const AGENT_TUNING_ENV = ['NODE_OPTIONS', 'MALLOC_MMAP_THRESHOLD_', 'OPENSSL_ia32cap'] as const;

/** Pieces of output as messages of at most `max` bytes each (a piece that does not fit is split, not copied). */
export function inMessages(pieces: readonly Buffer[], max: number): Buffer[][] {
  const messages: Buffer[][] = [];
  let group: Buffer[] = [];
  let room = max;
  for (let piece of pieces) {
    while (piece.length > 0) {
      if (room === 0) {
        messages.push(group);
        group = [];
        room = max;
      }
      const part = piece.length <= room ? piece : piece.subarray(0, room);
      group.push(part);
      room -= part.length;
      piece = piece.subarray(part.length);
    }
  }
  if (group.length) messages.push(group);
  return messages;
}

/**
 * The agent's environment, read once: commands inherit it. Reading process.env
 * goes through the C++ environment for every variable, which costs about a
 * millisecond per command in an emulated guest.
 */
const AGENT_ENV: Readonly<NodeJS.ProcessEnv> = (() => {
  const env = { ...process.env };
  for (const name of AGENT_TUNING_ENV) delete env[name];
  return Object.freeze(env);
})();

export interface ExecContext {
  policy: Policy;
  users: UserDb;
  log: AuditLogger;
  running: { count: number };
  spawner: Spawner;
}

function signalName(sig: string | undefined): NodeJS.Signals {
  const name = (sig || 'SIGTERM').toUpperCase();
  const full = (name.startsWith('SIG') ? name : `SIG${name}`) as NodeJS.Signals;
  if (!(full in osConstants.signals)) throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, `unknown signal ${sig}`);
  return full;
}

function killGroup(child: Spawned, sig: NodeJS.Signals): void {
  if (process.platform === 'win32') return killProcessTree(child.pid); // no signals or process groups there
  try {
    process.kill(-child.pid, sig); // the whole process group (each command leads its own)
  } catch {
    try {
      process.kill(child.pid, sig);
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
    argv = shellArgv(req.shellCommand, req.shell);
  } else {
    argv = req.argv.map((a) => Buffer.from(a).toString('utf8'));
  }
  if (!argv.length || !argv[0]) throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, 'empty command');
  const user = ctx.users.user(req.user);
  const group = ctx.users.group(req.group);
  const gid = group ?? user?.gid;
  ctx.policy.checkExec(argv[0], user?.name);
  if (group !== undefined) {
    // Without a user the command runs as the agent's.
    const runAs = user ?? ctx.users.user({ numeric: process.getuid?.() ?? 0 })!;
    ctx.policy.checkGroup(group, ctx.users.groupName(group), { name: runAs.name, groups: ctx.users.groupsOf(runAs) });
  }
  ctx.policy.checkEnv(Object.keys(req.env ?? {}));
  if (process.platform === 'win32') checkWindowsExec(req);
  const max = ctx.policy.config.exec.maxConcurrent;
  if (max > 0 && ctx.running.count >= max) {
    throw new PortholeError(E.ERROR_CODE_RESOURCE_EXHAUSTED, `${ctx.running.count} commands are already running (the guest owner's limit is ${max})`, {
      rule: `exec.max_concurrent = ${max}`,
    });
  }
  const env: NodeJS.ProcessEnv = req.clearEnv ? { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' } : { ...AGENT_ENV };
  if (user) {
    env.HOME = user.home ?? env.HOME;
    env.USER = env.LOGNAME = user.name;
  }
  Object.assign(env, req.env);

  const cwd = workingDirectory(req.cwd, user?.home);

  ctx.running.count++;
  const started = Date.now();
  let child: Spawned;
  try {
    child = await ctx.spawner.spawn({ file: argv[0], args: argv.slice(1), cwd, env, uid: user?.uid, gid, stdin: !!req.stdin });
  } catch (err) {
    ctx.running.count--;
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new PortholeError(E.ERROR_CODE_NOT_FOUND, `command not found in the guest: ${argv[0]}`);
    throw PortholeError.from(err, `cannot run ${argv[0]}`);
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
  const stopListening = stream.onAbort(() => { cancelled = true; terminate(); });

  // When output last moved, and how many messages wait for the host's credit: see the grace below.
  let lastOutput = Date.now();
  let sending = 0;
  const forward = (pipe: Readable, fd: v1.OutputStream) =>
    new Promise<void>((resolve) => {
      // Pieces that came in one turn (a record of the spawn helper, read from its pipe in several reads) go as
      // one message: the pipe waits until it is sent (the host's credit is the backpressure).
      let pieces: Buffer[] = [];
      const flush = () => {
        if (!pieces.length) return;
        const taken = pieces;
        pieces = [];
        pipe.pause();
        sending++;
        Promise.all(inMessages(taken, stream.chunkSize).map((group) => stream.sendOutput(fd, group))).then(
          () => { sending--; lastOutput = Date.now(); pipe.resume(); },
          () => { sending--; pipe.destroy(); resolve(); },
        );
      };
      pipe.on('data', (data: Buffer) => {
        if (!pieces.length) process.nextTick(flush);
        pieces.push(data);
      });
      const ended = () => { flush(); resolve(); };
      pipe.on('end', ended);
      pipe.on('close', ended);
      pipe.on('error', () => resolve());
    });
  // A command whose outputs had already ended empty when it was reported started (most quick ones) has
  // nothing to forward; waiting for its streams' 'end' would put a tick between its start and its exit,
  // and the port would write them apart.
  let outputsEnded = child.outputsDone?.() ?? false;
  const outputs = outputsEnded
    ? Promise.resolve()
    : Promise.all([forward(child.stdout, v1.OutputStream.OUTPUT_STDOUT), forward(child.stderr, v1.OutputStream.OUTPUT_STDERR)])
      .then(() => { outputsEnded = true; });

  // Messages from the host: stdin, signals, cancel.
  const inbound = (async () => {
    try {
      for await (const m of stream) {
        if (m.body === 'chunk' && child.stdin) {
          if (!child.stdin.write(bytesOf(m.chunk!.data))) await writable(child.stdin);
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

  await stream.send({ execStarted: { pid: child.pid } }).catch(() => undefined);
  let status: ExitStatus | undefined;
  let lost: Error | undefined;
  try {
    status = await child.exited;
  } catch (err) {
    lost = err as Error;
  }
  if (timeout) clearTimeout(timeout);
  // A timed-out or cancelled command goes with its whole group, even members that outlived it;
  // so does one whose exit status was lost, which nobody could watch any more.
  if (timedOut || cancelled || lost) killGroup(child, 'SIGKILL');
  ctx.running.count--;
  // Grandchildren may keep the pipes open: stop forwarding once no output came for a while. Output
  // held back by the host's credit is still the command's and is all sent (that is backpressure).
  if (!outputsEnded) {
    const grace = setInterval(() => {
      if (sending === 0 && Date.now() - lastOutput >= PIPE_GRACE_MS) {
        child.stdout.destroy();
        child.stderr.destroy();
      }
    }, PIPE_GRACE_MS / 4);
    await outputs;
    clearInterval(grace);
  }
  if (killTimer) clearTimeout(killTimer);
  stopListening();
  void inbound;
  if (lost) throw PortholeError.from(lost, `${argv[0]} (pid ${child.pid}) was killed`);
  const [code, sig] = status!;
  return {
    exited: code !== null,
    code: code ?? 0,
    signal: sig ?? '',
    durationMs: Date.now() - started,
    timedOut,
    cancelled,
  };
}
