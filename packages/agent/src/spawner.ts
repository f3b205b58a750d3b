// How commands are started. Node's child_process forks the agent, which under
// emulation costs ~15 ms per command for a ~60 MiB process, and wraps each pipe
// in a socket; porthole-spawn (native/porthole-spawn.c) is a small helper
// process that starts them with vfork and carries every command's stdio over
// its own two pipes. Both give the same thing: a process in its own process
// group, with its stdin, stdout and stderr as streams.
import type { ChildProcess } from 'node:child_process';
import { existsSync, writeSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { getSystemErrorName } from 'node:util';
import { constants as osConstants } from 'node:os';
import { v1, PortholeError } from '@porthole/protocol';
import { ByteQueue } from '@porthole/transport';
import { AuditLogger } from './audit';
import { isVerbatimCmd } from './windows/exec';
import { childProcess } from './builtins';

export interface SpawnOptions {
  file: string;
  args: string[];
  cwd: string;
  env: NodeJS.ProcessEnv;
  uid?: number;
  gid?: number;
  /** A pipe for stdin; without it stdin is /dev/null. */
  stdin: boolean;
}

/** Exit code, or the signal that ended the process. */
export type ExitStatus = [code: number | null, signal: NodeJS.Signals | null];

export interface Spawned {
  pid: number;
  stdin?: Writable;
  stdout: Readable;
  stderr: Readable;
  /** Rejects only when the exit status cannot be known (the helper that started it ended). */
  exited: Promise<ExitStatus>;
  /**
   * Whether stdout and stderr both ended with nothing left in them, known without waiting for their 'end'
   * (porthole-spawn reports a quick command's start and ends together). Absent where it cannot be told.
   */
  outputsDone?(): boolean;
}

export interface Spawner {
  readonly description: string;
  /** Resolves once the process runs; rejects with an errno-coded error (ENOENT, EACCES, ...) when it cannot. */
  spawn(options: SpawnOptions): Promise<Spawned>;
  close(): void;
}

/** The helper's file name, installed beside the agent (bundle, single executable or dist/). */
export const SPAWN_HELPER_NAME = 'porthole-spawn';
export const defaultSpawnHelperPath = (): string => join(__dirname, SPAWN_HELPER_NAME);
/** The record format porthole-spawn.c speaks (the id of its "R" record). */
const HELPER_PROTOCOL = 1;
/** porthole-spawn's start-up answer must come within this. */
const HELPER_START_MS = 10000;

const envEntries = (env: NodeJS.ProcessEnv) => Object.entries(env).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${v}`);

/** The environment as `KEY=value` entries, once it is known that nothing the command gets holds a NUL byte. */
function checkNoNul(options: SpawnOptions): string[] {
  const env = envEntries(options.env);
  if ([options.file, options.cwd, ...options.args, ...env].some((s) => s.includes('\0'))) {
    throw new PortholeError(v1.ErrorCode.ERROR_CODE_INVALID_ARGUMENT, 'command, arguments, environment and working directory must not contain NUL bytes');
  }
  return env;
}

function errnoError(errno: number, file: string): NodeJS.ErrnoException {
  const name = getSystemErrorName(-errno);
  return Object.assign(new Error(`spawn ${file} ${name}`), { code: name, errno: -errno, syscall: 'spawn' });
}

export class NodeSpawner implements Spawner {
  readonly description = "Node's child_process";

  async spawn(options: SpawnOptions): Promise<Spawned> {
    checkNoNul(options);
    const child: ChildProcess = childProcess().spawn(options.file, options.args, {
      cwd: options.cwd,
      env: options.env,
      uid: options.uid,
      gid: options.gid,
      // Its own process group on Unix; on Windows a detached child would get a console window of its own,
      // and its tree is found and stopped by windows/processes.ts instead.
      detached: process.platform !== 'win32',
      windowsHide: true,
      windowsVerbatimArguments: process.platform === 'win32' && isVerbatimCmd(options.file, options.args),
      stdio: [options.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    // Listening before anything is awaited: a quick command may exit at once.
    const exited = new Promise<ExitStatus>((resolve) => child.once('exit', (c, s) => resolve([c, s])));
    const failed = await new Promise<Error | null>((resolve) => {
      child.once('spawn', () => resolve(null));
      child.once('error', (err) => resolve(err));
    });
    if (failed) throw failed;
    return { pid: child.pid!, stdin: child.stdin ?? undefined, stdout: child.stdout!, stderr: child.stderr!, exited };
  }

  close(): void {
    // Nothing is held between commands.
  }
}

/** Where libuv leaves a read's length and offset for a stream handle's onread (Node's stream_base_commons). */
interface StreamBaseState {
  streamBaseState: Int32Array;
  kReadBytesOrError: number;
  kArrayBufferOffset: number;
}
type ReadHandle = { onread?: (this: unknown, arrayBuffer: ArrayBuffer) => unknown; fd?: number };
const handleOf = (socket: Socket) => (socket as unknown as { _handle?: ReadHandle })._handle;

/**
 * Bytes a socket reads, handed to `deliver` from its handle's read callback, as the agent's port reads:
 * a Readable's push, 'data' event and their ticks cost ~1 ms per read of interpreted JavaScript in an
 * emulated guest, once or twice per command. EOF and errors go through Node's own callback. Where this
 * Node has no such callback (or hides its state), the bytes come as 'data' events.
 */
export function readDirectly(socket: Socket, deliver: (data: Buffer) => void): void {
  const handle = handleOf(socket);
  let state: StreamBaseState | undefined;
  try {
    const binding = (process as unknown as { binding(name: 'stream_wrap'): Partial<StreamBaseState> }).binding('stream_wrap');
    if (binding.streamBaseState instanceof Int32Array && typeof binding.kReadBytesOrError === 'number' && typeof binding.kArrayBufferOffset === 'number') {
      state = binding as StreamBaseState;
    }
  } catch {
    // no process.binding: events below
  }
  const nodeOnRead = handle?.onread;
  if (!handle || !state || typeof nodeOnRead !== 'function') {
    socket.on('data', deliver);
    return;
  }
  const { streamBaseState, kReadBytesOrError, kArrayBufferOffset } = state;
  handle.onread = function onread(arrayBuffer: ArrayBuffer) {
    const n = streamBaseState[kReadBytesOrError];
    // Each read gets a buffer of its own from Node: a view of it may be kept.
    if (n > 0) return void deliver(Buffer.from(arrayBuffer, streamBaseState[kArrayBufferOffset], n));
    return nodeOnRead.call(this, arrayBuffer);
  };
}

interface Waiter<T> {
  resolve(value: T): void;
  reject(err: Error): void;
}

/** One output of a command run by the helper: each chunk taken asks the helper for the next. */
class HelperOutput extends Readable {
  private owed = false;
  private finished = false;

  /** ack: ask for the next chunk; onClose: no more will come, by its end or by the reader leaving (dropped). */
  constructor(private readonly ack: () => void, private readonly onClose: (dropped: boolean) => void) {
    // One record (up to 128 KiB) may wait here while the last one is sent on: the helper reads the next meanwhile.
    super({ highWaterMark: 128 * 1024 });
  }

  /** One record of output, in the pieces it was read in: the helper is asked for the next once there is room. */
  deliver(pieces: readonly Buffer[]): void {
    let room = true;
    for (const piece of pieces) room = this.push(piece);
    if (room) this.ack();
    else this.owed = true;
  }

  /** Ended, and everything it held was read. */
  get drained(): boolean {
    return this.finished && this.readableLength === 0;
  }

  finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.push(null);
    this.onClose(false);
  }

  override _read(): void {
    if (!this.owed) return;
    this.owed = false;
    this.ack();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    // Stopped before the end (grandchildren holding the pipe): the helper closes its end.
    if (!this.finished) {
      this.finished = true;
      this.onClose(true);
    }
    callback(err);
  }
}

interface HelperCommand {
  options: SpawnOptions;
  start: Waiter<Spawned>;
  exit?: Waiter<ExitStatus>;
  exited: boolean;
  outputs: HelperOutput[];
  openOutputs: number;
  /** Write callbacks of stdin chunks the helper has not confirmed ('W'). */
  stdinWritten: Array<(err?: Error | null) => void>;
}

/** An output record's head: length (u32), 'O', command id (u32), fd (u8); its data follows. */
const OUTPUT_HEAD = 10;

/** Bytes per stdin record: the helper holds one record per command. */
const STDIN_RECORD = 256 * 1024;

/** One running porthole-spawn: records both ways over its stdin and stdout (see porthole-spawn.c). */
class HelperProcess {
  private readonly child: ChildProcess;
  private readonly commands = new Map<number, HelperCommand>();
  private nextId = 1;
  private readonly received = new ByteQueue();
  private ended?: Error;
  /** Whether the helper's handles keep the event loop alive (see idle). */
  private busy = true;
  private greeting!: Waiter<void>;
  private readonly greetingTimer: NodeJS.Timeout;
  /** Resolves when the helper said it speaks our protocol. */
  readonly ready: Promise<void>;
  isReady = false;

  constructor(path: string, private readonly log: AuditLogger, private readonly onEnd: () => void) {
    this.ready = new Promise<void>((resolve, reject) => { this.greeting = { resolve, reject }; });
    this.ready.catch(() => undefined);
    this.child = childProcess().spawn(path, [], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.greetingTimer = setTimeout(() => this.fail(new Error(`no answer within ${HELPER_START_MS} ms`)), HELPER_START_MS);
    this.child.on('error', (err) => this.fail(err));
    this.child.on('exit', (code, sig) => this.fail(new Error(sig ? `killed by ${sig}` : `exit status ${code}`)));
    this.child.stdin!.on('error', () => undefined); // its end shows as 'exit'
    readDirectly(this.child.stdout as Socket, (data) => this.receive(data));
    this.idle();
  }

  /** The helper is gone or unusable: whoever waits for it learns why. */
  private fail(err: Error): void {
    clearTimeout(this.greetingTimer);
    if (this.ended) return;
    this.ended = err;
    this.greeting.reject(err);
    const lost = new PortholeError(v1.ErrorCode.ERROR_CODE_INTERNAL, `${SPAWN_HELPER_NAME} ended (${err.message}): the exit status is lost`);
    for (const c of this.commands.values()) {
      c.start.reject(lost);
      c.exit?.reject(lost);
      for (const o of c.outputs) o.finish();
      for (const cb of c.stdinWritten.splice(0)) cb(lost);
    }
    this.commands.clear();
    this.child.kill('SIGKILL');
    this.onEnd();
  }

  /** Nothing waited for: the helper alone does not keep the agent's event loop alive. */
  private idle(): void {
    const busy = this.commands.size > 0;
    if (busy === this.busy) return;
    this.busy = busy;
    for (const h of [this.child, this.child.stdout as Socket, this.child.stdin as Socket]) (busy ? h.ref() : h.unref());
  }

  private send(type: string, id: number, payload?: Buffer): void {
    if (this.ended) return;
    const record = Buffer.allocUnsafe(9 + (payload?.length ?? 0));
    record.writeUInt32LE(record.length - 4, 0);
    record.write(type, 4, 'latin1');
    record.writeUInt32LE(id, 5);
    payload?.copy(record, 9);
    this.write(record);
  }

  /**
   * A record goes straight to the helper's socket when nothing is queued before it (the Writable's path
   * costs as much as a read's, see readDirectly); what the socket does not take at once is queued behind.
   */
  private write(record: Buffer): void {
    const stdin = this.child.stdin as Socket;
    const fd = handleOf(stdin)?.fd;
    if (stdin.writableLength === 0 && fd !== undefined && fd >= 0) {
      try {
        const n = writeSync(fd, record);
        if (n === record.length) return;
        record = record.subarray(n);
      } catch {
        // EAGAIN: queued below; anything else (the helper is gone) fails there too and shows as its exit
      }
    }
    stdin.write(record);
  }

  /** `env`: the environment's entries (checkNoNul). */
  spawn(options: SpawnOptions, env: string[]): Promise<Spawned> {
    if (this.ended) return Promise.reject(this.ended);
    const id = this.nextId++;
    const fields = [
      options.stdin ? 'i' : '', options.uid === undefined ? '' : String(options.uid), options.gid === undefined ? '' : String(options.gid),
      options.cwd, options.file, String(options.args.length + 1), options.file, ...options.args, ...env,
    ];
    const promise = new Promise<Spawned>((resolve, reject) => {
      const output = (fd: number) => new HelperOutput(() => this.send('A', id, Buffer.of(fd)), (dropped) => {
        if (dropped) this.send('D', id);
        const c = this.commands.get(id);
        if (c && --c.openOutputs === 0) this.forgetIfDone(id, c);
      });
      this.commands.set(id, { options, start: { resolve, reject }, exited: false, outputs: [output(1), output(2)], openOutputs: 2, stdinWritten: [] });
    });
    this.send('S', id, Buffer.from(fields.join('\0') + '\0'));
    this.idle();
    return promise;
  }

  close(): void {
    this.child.stdin!.end();
  }

  private receive(data: Buffer): void {
    this.received.push(data);
    while (this.received.length >= 4) {
      const length = this.received.peek(4).readUInt32LE(0);
      if (this.received.length < 4 + length) break;
      const head = this.received.peek(Math.min(4 + length, OUTPUT_HEAD));
      const type = head.toString('latin1', 4, 5);
      const id = head.readUInt32LE(5);
      // Output (up to 128 KiB a record) comes in several reads of the pipe: it goes on in the pieces it came
      // in, which the host gets as one message; joining them here cost a fresh buffer and a copy per record.
      if (type === 'O' && length >= OUTPUT_HEAD - 4) {
        this.received.takeParts(OUTPUT_HEAD);
        this.commands.get(id)?.outputs[head[9] - 1].deliver(this.received.takeParts(4 + length - OUTPUT_HEAD));
      } else {
        this.record(type, id, this.received.take(4 + length).subarray(9));
      }
    }
    this.idle();
  }

  private record(type: string, id: number, payload: Buffer): void {
    if (type === 'R') {
      clearTimeout(this.greetingTimer);
      if (id === HELPER_PROTOCOL) {
        this.isReady = true;
        this.greeting.resolve();
      }
      else this.fail(new Error(`it speaks protocol ${id}, this agent needs ${HELPER_PROTOCOL} (agent and helper of different versions)`));
      return;
    }
    const c = this.commands.get(id);
    if (!c) return;
    switch (type) {
      case 'P':
        c.start.resolve(this.started(id, c, payload.readUInt32LE(0)));
        break;
      case 'F':
        this.commands.delete(id);
        c.start.reject(errnoError(payload.readUInt32LE(0), c.options.file));
        break;
      case 'E':
        c.outputs[payload[0] - 1].finish();
        break;
      case 'W':
        c.stdinWritten.shift()?.();
        break;
      case 'X': {
        const code = payload.readInt32LE(0);
        const sig = payload.readUInt32LE(4);
        const name = (Object.keys(osConstants.signals) as NodeJS.Signals[]).find((n) => osConstants.signals[n] === sig) ?? null;
        c.exited = true;
        c.exit?.resolve(sig ? [null, name] : [code, null]);
        this.forgetIfDone(id, c);
        break;
      }
      default:
        this.log.warn(`${SPAWN_HELPER_NAME}: unexpected record`, { type });
    }
  }

  /** Mirrors the helper: a command is forgotten once it exited and both outputs ended. */
  private forgetIfDone(id: number, c: HelperCommand): void {
    if (c.exited && c.openOutputs === 0) this.commands.delete(id);
  }

  private started(id: number, c: HelperCommand, pid: number): Spawned {
    const exited = new Promise<ExitStatus>((resolve, reject) => { c.exit = { resolve, reject }; });
    exited.catch(() => undefined);
    let stdin: Writable | undefined;
    if (c.options.stdin) {
      stdin = new Writable({
        write: (chunk: Buffer, _encoding, callback) => {
          // The helper holds one record per command: a large write goes piece by piece, each after the last was written.
          const next = (offset: number) => (err?: Error | null) => {
            // A command already forgotten (exited, outputs ended) reads nothing more: the rest is dropped.
            if (err || offset >= chunk.length || !this.commands.has(id)) return callback(err);
            c.stdinWritten.push(next(offset + STDIN_RECORD));
            this.send('I', id, chunk.subarray(offset, offset + STDIN_RECORD));
          };
          next(0)();
        },
        final: (callback) => { this.send('C', id); callback(); },
      });
    }
    return { pid, stdin, stdout: c.outputs[0], stderr: c.outputs[1], exited, outputsDone: () => c.outputs.every((o) => o.drained) };
  }
}

/** Starts commands through porthole-spawn, started on first use and again after it ended. */
export class HelperSpawner implements Spawner {
  private helper?: HelperProcess;
  private fallback?: NodeSpawner;

  constructor(private readonly path: string, private readonly log: AuditLogger) {}

  get description(): string {
    return this.fallback ? this.fallback.description : `${SPAWN_HELPER_NAME} (${this.path})`;
  }

  async spawn(options: SpawnOptions): Promise<Spawned> {
    const env = checkNoNul(options);
    if (!this.fallback) {
      const helper = this.helper ?? this.startHelper();
      try {
        await helper.ready;
        return await helper.spawn(options, env);
      } catch (err) {
        if (!helper.isReady) this.fallBack(err as Error);
        else throw err;
      }
    }
    return this.fallback!.spawn(options);
  }

  private startHelper(): HelperProcess {
    const helper = new HelperProcess(this.path, this.log, () => { if (this.helper === helper) this.helper = undefined; });
    this.helper = helper;
    return helper;
  }

  /** A helper that cannot start would fail every command: Node's spawn is slower but works. */
  private fallBack(err: Error): void {
    if (this.fallback) return;
    this.log.warn(`${SPAWN_HELPER_NAME} cannot start: commands start with Node's child_process`, { helper: this.path, error: err.message });
    this.fallback = new NodeSpawner();
  }

  close(): void {
    this.helper?.close();
    this.helper = undefined;
  }
}

/** The helper when the owner allows it and it is installed, else Node's child_process. */
export function createSpawner(useHelper: boolean, path: string, log: AuditLogger): Spawner {
  return useHelper && existsSync(path) ? new HelperSpawner(path, log) : new NodeSpawner();
}
