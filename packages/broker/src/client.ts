import { EventEmitter } from 'node:events';
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import * as https from 'node:https';
import { PassThrough, Readable, Writable } from 'node:stream';
import { v1, PortholeError, Session, SessionLogger, Stream, MAX_CHUNK_SIZE, errors, bytesOf } from '@porthole/protocol';
import { Connector, connectWithRetry } from '@porthole/transport';
import { Route, RoutedConnector, routeTo } from './route';
import { BROKER_VERSION } from './version';

const E = v1.ErrorCode;

/** "disabled by the guest's owner: exec.enabled = false" for policy refusals; the message otherwise. */
export function describeError(err: unknown): string {
  const e = PortholeError.from(err);
  if (e.code === E.ERROR_CODE_POLICY_DENIED) return `disabled by the guest's owner: ${e.rule || e.message} (${e.message})`;
  return e.message;
}

/** The VM's channel could not be opened (no socket, libvirt domain gone or stopped, …): the connector's error is the cause. */
export class UnreachableError extends PortholeError {
  constructor(cause: Error) {
    super(E.ERROR_CODE_NOT_FOUND, cause.message, { cause });
    this.name = 'UnreachableError';
  }
}

export interface ConnectOptions {
  /** How long to wait for the channel and the agent's hello. */
  timeoutMs?: number;
  logger?: SessionLogger;
  /** Keep reconnecting after a lost channel (default true). */
  reconnect?: boolean;
  /**
   * The host's broker daemon (`porthole serve`), through which the client reaches VMs when it runs, as
   * virsh goes through libvirtd: its socket (default $PORTHOLE_BROKER_SOCKET, else
   * /run/porthole/broker.sock), or false to connect to the VM's channel directly. A socket named here
   * or in the environment must have a daemon; at the default path, no daemon means a direct connection.
   */
  broker?: string | false;
}

export type InstallSource = Buffer | Uint8Array | Readable | string | { path: string } | { url: string };

export interface InstallOptions {
  path: string | Buffer;
  owner?: string | number;
  group?: string | number;
  /** Without a group: keep the file's group (the agent's for a new file), not the owner's primary group. */
  keepGroup?: boolean;
  mode?: number;
  mkdir?: boolean;
  parentMode?: number;
  overwrite?: 'replace' | 'fail-if-exists' | 'append';
  /** Reuse an id to resume or repeat an injection idempotently. */
  requestId?: string;
  /** Total size when the source is a stream whose size is known. */
  size?: number;
  /** Refuse a final symlink etc. is the agent's business; this is the expected content hash when known. */
  sha256?: string;
}

export interface InstallResult {
  path: Buffer;
  size: number;
  sha256: string;
  uid: number;
  gid: number;
  mode: number;
  /** Offset the transfer resumed from after a reconnect (0 when it did not). */
  resumedFrom: number;
}

export interface ReadResult {
  header: v1.FileReadHeader;
  sha256: string;
  length: number;
}

/** argv (no shell), or a command line for the guest's shell. */
export type ExecCommand = string[] | { shell: string; powershell?: boolean };

export interface ExecOptions {
  env?: Record<string, string>;
  clearEnv?: boolean;
  cwd?: string;
  user?: string | number;
  group?: string | number;
  timeoutMs?: number;
  /** Stream stdin: write to task.stdin and end it. */
  stdin?: boolean;
  /** Names of env entries whose values must not appear in logs. */
  secretEnv?: string[];
}

export interface ExitStatus {
  code: number | null;
  signal: string | null;
  durationMs: number;
  timedOut: boolean;
  cancelled: boolean;
}

function principal(p: string | number | undefined): v1.Principal.$Properties | undefined {
  if (p === undefined || p === '') return undefined;
  return typeof p === 'number' ? { numeric: p } : /^\d+$/.test(p) ? { numeric: Number(p) } : { name: p };
}

/** A cancellable piece of work with progress. */
export class Task<T> extends EventEmitter {
  readonly id: string;
  readonly result: Promise<T>;
  private readonly abort = new AbortController();

  constructor(id: string, run: (signal: AbortSignal, task: Task<T>) => Promise<T>) {
    super();
    this.id = id;
    this.result = run(this.abort.signal, this);
    this.result.catch(() => undefined);
  }

  cancel(reason = 'cancelled by the caller'): void {
    this.abort.abort(errors.cancelled(reason));
  }

  get signal(): AbortSignal {
    return this.abort.signal;
  }
}

/** A source that can be read again from any offset (so an injection can resume after a reconnect). */
interface Content {
  size?: number;
  read(offset: number): AsyncIterable<Buffer>;
  resumable: boolean;
}

async function contentOf(source: InstallSource): Promise<Content> {
  if (Buffer.isBuffer(source) || source instanceof Uint8Array) {
    const buf = Buffer.from(source.buffer, source.byteOffset, source.byteLength);
    return {
      size: buf.length,
      resumable: true,
      async *read(offset) {
        for (let off = offset; off < buf.length; off += MAX_CHUNK_SIZE) yield buf.subarray(off, off + MAX_CHUNK_SIZE);
      },
    };
  }
  if (typeof source === 'string' || (typeof source === 'object' && 'path' in source && !(source instanceof Readable))) {
    const path = typeof source === 'string' ? source : source.path;
    const st = await fsp.stat(path).catch((err: Error) => { throw new PortholeError(E.ERROR_CODE_NOT_FOUND, `cannot read local file ${path}: ${err.message}`); });
    if (!st.isFile()) throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, `${path} is not a regular file`);
    return {
      size: st.size,
      resumable: true,
      read: (offset) => createReadStream(path, { start: offset, highWaterMark: MAX_CHUNK_SIZE }),
    };
  }
  if (source instanceof Readable) {
    let used = false;
    return {
      resumable: false,
      read(offset) {
        if (used || offset) throw errors.unsupported('a stream source cannot be resumed; start the injection again');
        used = true;
        return source;
      },
    };
  }
  if (typeof source === 'object' && 'url' in source) {
    const url = new URL(source.url);
    if (url.protocol !== 'https:') throw errors.invalid(`only https URLs can be injected (got ${url.protocol})`);
    const body = await new Promise<Readable & { headers?: Record<string, unknown> }>((resolve, reject) => {
      https.get(url, (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          reject(errors.invalid(`${url.href} answered HTTP ${res.statusCode}`));
        } else resolve(res);
      }).on('error', (err) => reject(new PortholeError(E.ERROR_CODE_NOT_FOUND, `cannot fetch ${url.href}: ${err.message}`)));
    });
    const length = Number((body as { headers?: Record<string, string> }).headers?.['content-length'] ?? NaN);
    const inner = await contentOf(body);
    return { ...inner, size: Number.isFinite(length) ? length : undefined };
  }
  throw errors.invalid('unsupported content source');
}

/** Events kept for the first 'event' listener. */
const MAX_UNHEARD_EVENTS = 64;

/** The first handshake attempt's limit; later attempts double it. */
const HANDSHAKE_ATTEMPT_MS = 3000;

/**
 * A connection to one VM's agent. It reconnects by itself when the channel is
 * lost; requests in flight then fail with SESSION_RESET (an injection of a
 * file or buffer resumes by itself instead).
 */
export class PortholeClient extends EventEmitter {
  private session?: Session;
  private connecting?: Promise<Session>;
  private closed = false;
  /** Agent events that came before anyone listened (e.g. right after the handshake, inside connect()). */
  private readonly unheardEvents: v1.Event[] = [];

  /** How this client reaches the VM: through the broker daemon or directly. */
  readonly route: Route;
  private readonly connector: Connector;

  private constructor(readonly target: string, routed: RoutedConnector, private readonly options: ConnectOptions) {
    super();
    this.connector = routed.connector;
    this.route = routed.route;
    this.on('newListener', (name: string) => {
      if (name === 'event' && this.unheardEvents.length > 0) {
        queueMicrotask(() => { for (const e of this.unheardEvents.splice(0)) this.emit('event', e); });
      }
    });
  }

  /** `routed`: a way chosen by the caller (the daemon's own tasks); otherwise the daemon if one runs, else direct. */
  static async connect(target: string, options: ConnectOptions = {}, routed?: RoutedConnector): Promise<PortholeClient> {
    const client = new PortholeClient(target, routed ?? await routeTo(target, { broker: options.broker, timeoutMs: options.timeoutMs }), options);
    await client.ready();
    return client;
  }

  /** The agent's hello (version, OS, capabilities, policy limits). */
  get hello(): v1.Hello | undefined {
    return this.session?.peerHello;
  }

  /** The current session, (re)connecting first when needed. */
  ready(): Promise<Session> {
    if (this.closed) return Promise.reject(errors.cancelled('client closed'));
    if (this.session?.isReady) return Promise.resolve(this.session);
    this.connecting ??= this.open().finally(() => { this.connecting = undefined; });
    return this.connecting;
  }

  private async open(): Promise<Session> {
    const timeoutMs = this.options.timeoutMs ?? 30000;
    const deadline = Date.now() + timeoutMs;
    // A byte channel can hold half a frame from a broker that died mid-write (a QEMU
    // chardev reconnects too fast for the guest to see the gap), and the agent then
    // reads our hello as the rest of that frame. Hanging up and calling again shows
    // the guest the break, which resets its decoder: so retry the handshake, waiting
    // longer each time, until the caller's timeout.
    for (let attemptMs = HANDSHAKE_ATTEMPT_MS; ; attemptMs *= 2) {
      const left = deadline - Date.now();
      const session = await this.openOnce(Math.max(1000, left));
      try {
        await session.ready(Math.max(1000, Math.min(attemptMs, deadline - Date.now())));
        // An agent that greeted first (it had just started) still answers our hello. Take that answer
        // (it comes before the pong) before going on: a caller that hangs up at once would leave it in
        // the VM's port, where QEMU keeps what the guest wrote as the host left and hands it to the next
        // host, who would take it for the answer to its own hello while the agent never heard that one.
        if (!session.peerHello?.reply) await session.ping(Math.max(1000, Math.min(attemptMs, deadline - Date.now())));
      } catch (err) {
        session.close();
        const timedOut = err instanceof PortholeError && err.code === E.ERROR_CODE_TIMEOUT;
        if (!timedOut || Date.now() + 200 >= deadline) {
          throw timedOut ? errors.timeout(`no agent answered on ${this.connector.description} within ${timeoutMs} ms (is porthole-agent running in the guest?)`) : err;
        }
        await new Promise((r) => setTimeout(r, 200));
        continue;
      }
      this.session = session;
      this.emit('connect', session.peerHello);
      return session;
    }
  }

  private async openOnce(timeoutMs: number): Promise<Session> {
    const channel = await connectWithRetry(this.connector, { timeoutMs, maxDelayMs: 1000 }).catch((err: Error) => {
      // Whatever stopped the channel (no socket, no domain, a daemon that could not reach the VM) means unreachable.
      throw err instanceof UnreachableError ? err : new UnreachableError(err);
    });
    const session = new Session(channel, {
      role: 'broker',
      hello: { softwareVersion: BROKER_VERSION },
      logger: this.options.logger,
    });
    session.on('event', (e: v1.Event) => {
      if (this.listenerCount('event') > 0) this.emit('event', e);
      else if (this.unheardEvents.length < MAX_UNHEARD_EVENTS) this.unheardEvents.push(e);
    });
    session.on('reset', (e: PortholeError) => this.emit('reset', e));
    session.once('close', (err?: Error) => {
      if (this.session === session) this.session = undefined;
      this.emit('disconnect', err);
    });
    return session;
  }

  close(): void {
    this.closed = true;
    this.session?.close();
  }

  async ping(): Promise<number> {
    return (await this.ready()).ping();
  }

  async info(): Promise<v1.InfoResult> {
    const session = await this.ready();
    const stream = session.openStream({ info: {} });
    stream.end();
    const msg = await stream.read();
    await drain(stream);
    if (msg?.body !== 'info') throw errors.protocol('the agent answered info with something else');
    return msg.info as v1.InfoResult;
  }

  /** Inject a file: atomic on the guest, sha256-verified, resumed after a reconnect when the source allows. */
  installFile(source: InstallSource, options: InstallOptions): Task<InstallResult> {
    const requestId = options.requestId ?? randomUUID();
    return new Task(requestId, async (signal, task) => {
      const content = await contentOf(source);
      const path = Buffer.isBuffer(options.path) ? options.path : Buffer.from(options.path);
      const request: v1.FileWriteRequest.$Properties = {
        path,
        size: content.size ?? options.size ?? 0,
        sizeKnown: (content.size ?? options.size) !== undefined,
        sha256: options.sha256 ?? '',
        owner: principal(options.owner),
        group: principal(options.group),
        keepGroup: options.keepGroup ?? false,
        mode: options.mode ?? 0,
        hasMode: options.mode !== undefined,
        overwrite: options.overwrite === 'fail-if-exists' ? v1.OverwritePolicy.OVERWRITE_FAIL_IF_EXISTS
          : options.overwrite === 'append' ? v1.OverwritePolicy.OVERWRITE_APPEND : v1.OverwritePolicy.OVERWRITE_REPLACE,
        mkdirParents: options.mkdir ?? false,
        parentMode: options.parentMode ?? 0,
        hasParentMode: options.parentMode !== undefined,
      };
      let resumedFrom = 0;
      for (let attempt = 0; ; attempt++) {
        let offset = 0;
        const session = await this.ready();
        // After a reconnect, or when the caller names a request id (perhaps a transfer an earlier
        // broker process started), the agent says how much it already holds.
        if (attempt > 0 || (options.requestId && content.resumable)) {
          const status = await this.transferStatus(session, requestId, path);
          if (status.completed) return { ...toResult(status.completed), resumedFrom };
          offset = status.found ? Number(status.offset) : 0;
          resumedFrom = offset;
          task.emit('resume', { offset });
        }
        try {
          const result = await this.sendFile(session, requestId, { ...request, resumeOffset: offset }, content, offset, signal, task);
          return { ...result, resumedFrom };
        } catch (err) {
          const e = PortholeError.from(err);
          const retry = e.code === E.ERROR_CODE_SESSION_RESET && content.resumable && !signal.aborted && attempt < 5;
          if (!retry) throw e;
          task.emit('reconnecting', e);
        }
      }
    });
  }

  private async transferStatus(session: Session, requestId: string, path: Buffer): Promise<v1.FileTransferStatus> {
    const stream = session.openStream({ requestId, transferStatus: { path } });
    stream.end();
    const msg = await stream.read();
    await drain(stream);
    if (msg?.body !== 'transferStatus') throw errors.protocol('unexpected answer to a transfer status request');
    return msg.transferStatus as v1.FileTransferStatus;
  }

  private async sendFile(session: Session, requestId: string, request: v1.FileWriteRequest.$Properties, content: Content, offset: number, signal: AbortSignal, task: Task<InstallResult>): Promise<Omit<InstallResult, 'resumedFrom'>> {
    const stream = session.openStream({ requestId, fileWrite: request });
    const onAbort = () => stream.reset(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    // The agent may refuse at once (policy, path): stop sending when it does.
    const answer = stream.read();
    answer.catch(() => undefined);
    try {
      const hash = createHash('sha256');
      if (offset > 0) {
        // The hash covers the whole file: hash the part the agent already holds.
        let hashedBytes = 0;
        for await (const raw of content.read(0)) {
          const chunk = Buffer.isBuffer(raw) ? raw : Buffer.from(raw);
          const part = chunk.subarray(0, Math.min(chunk.length, offset - hashedBytes));
          hash.update(part);
          hashedBytes += part.length;
          if (hashedBytes >= offset) break;
        }
      }
      let position = offset;
      for await (const raw of content.read(offset)) {
        const chunk = Buffer.isBuffer(raw) ? raw : Buffer.from(raw);
        for (let off = 0; off < chunk.length; off += stream.chunkSize) {
          const data = chunk.subarray(off, off + stream.chunkSize);
          await stream.send({ chunk: { offset: position, data } });
          hash.update(data);
          position += data.length;
          task.emit('progress', { bytes: position, total: content.size });
        }
      }
      const sha256 = hash.digest('hex');
      // An append's sha256 covers the old content too, which only the guest has: it is not checked here.
      const append = request.overwrite === v1.OverwritePolicy.OVERWRITE_APPEND;
      await stream.send({ fileWriteEnd: { sha256: append ? '' : sha256 } });
      stream.end();
      const msg = await answer;
      await drain(stream);
      if (msg?.body !== 'fileWriteResult') throw errors.protocol('the agent answered a write with something else');
      const result = toResult(msg.fileWriteResult!);
      if (!append && result.sha256 !== sha256) throw new PortholeError(E.ERROR_CODE_CHECKSUM_MISMATCH, `the guest reports sha256 ${result.sha256}, sent ${sha256}`);
      return result;
    } catch (err) {
      // Prefer the agent's reason (e.g. policy) over the send error it caused.
      const agentReason = await Promise.race([answer.then(() => undefined, (e: unknown) => e), new Promise((r) => setTimeout(r, 50))]);
      const e = PortholeError.from(agentReason ?? err);
      // A failed source (e.g. a cut upload) must not leave the agent waiting for the rest; no-op after a reset.
      stream.reset(e);
      throw e;
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  /** Read a guest file (or a range of it) as a stream; `header` and `done` carry metadata and the verified sha256. */
  readFile(path: string | Buffer, range: { offset?: number; length?: number } = {}): Task<ReadResult> & { data: Readable } {
    const data = new PassThrough({ highWaterMark: 2 * MAX_CHUNK_SIZE });
    const task = new Task<ReadResult>(randomUUID(), async (signal, t) => {
      const session = await this.ready();
      const stream = session.openStream({ fileRead: { path: Buffer.isBuffer(path) ? path : Buffer.from(path), offset: range.offset ?? 0, length: range.length ?? 0 } });
      stream.end();
      signal.addEventListener('abort', () => stream.reset(signal.reason), { once: true });
      try {
        const first = await stream.read();
        if (first?.body !== 'fileReadHeader') throw errors.protocol('expected a file header');
        const header = first.fileReadHeader as v1.FileReadHeader;
        t.emit('header', header);
        const hash = createHash('sha256');
        let received = 0;
        for await (const m of stream) {
          if (m.body === 'chunk') {
            const chunk = bytesOf(m.chunk!.data);
            hash.update(chunk);
            received += chunk.length;
            t.emit('progress', { bytes: received, total: Number(header.length) });
            if (!data.write(chunk)) await new Promise((r) => data.once('drain', r));
          } else if (m.body === 'fileReadResult') {
            const sha256 = hash.digest('hex');
            if (sha256 !== m.fileReadResult!.sha256) throw new PortholeError(E.ERROR_CODE_CHECKSUM_MISMATCH, `read-back sha256 ${sha256} differs from the agent's ${m.fileReadResult!.sha256}`);
            data.end();
            return { header, sha256, length: received };
          }
        }
        throw errors.protocol('the file ended without its result');
      } catch (err) {
        const e = PortholeError.from(err);
        if (data.listenerCount('error') > 0) data.destroy(e); else data.destroy();
        throw e;
      }
    });
    return Object.assign(task, { data });
  }

  /**
   * Run a command: stdout/stderr stream while it runs; `exit` settles with its status.
   * `{ shell }` runs a command line through /bin/sh -c (cmd.exe on Windows guests);
   * `{ shell, powershell: true }` through PowerShell (Windows guests only).
   */
  exec(command: ExecCommand, options: ExecOptions = {}): ExecTask {
    return new ExecTask(this, command, options);
  }
}

function toResult(r: v1.FileWriteResult.$Properties): Omit<InstallResult, 'resumedFrom'> {
  return {
    path: Buffer.from(r.path ?? []),
    size: Number(r.size ?? 0),
    sha256: r.sha256 ?? '',
    uid: r.uid ?? 0,
    gid: r.gid ?? 0,
    mode: r.mode ?? 0,
  };
}

async function drain(stream: Stream): Promise<void> {
  try {
    while ((await stream.readLent()) !== null);
  } catch {
    // reset after the answer: nothing more to read
  }
}

/** A running command. */
export class ExecTask extends EventEmitter {
  readonly stdout = new PassThrough({ highWaterMark: 256 * 1024 });
  readonly stderr = new PassThrough({ highWaterMark: 256 * 1024 });
  readonly stdin: Writable;
  readonly exit: Promise<ExitStatus>;
  /** Resolves with the guest pid once the command started. */
  readonly started: Promise<number>;
  private stream?: Stream;
  private readonly pendingControl: v1.StreamMessage.$Properties[] = [];
  private localEnded = false;

  constructor(client: PortholeClient, command: ExecCommand, options: ExecOptions) {
    super();
    let markStarted!: (pid: number) => void;
    let failStarted!: (e: unknown) => void;
    this.started = new Promise((resolve, reject) => { markStarted = resolve; failStarted = reject; });
    this.started.catch(() => undefined);
    const stdinQueue: Array<{ data: Buffer; done: (e?: Error | null) => void }> = [];
    let stdinEnded = false;
    const pump = async () => {
      if (!this.stream) return;
      while (stdinQueue.length) {
        const { data, done } = stdinQueue.shift()!;
        try {
          // A write may be any size; a message must fit the agent's stream window.
          for (let off = 0; off < data.length; off += this.stream.chunkSize) await this.stream.send({ chunk: { data: data.subarray(off, off + this.stream.chunkSize) } });
          done();
        } catch (err) {
          done(err as Error);
        }
      }
      if (stdinEnded) this.endStream();
    };
    this.stdin = new Writable({
      highWaterMark: 256 * 1024,
      write: (chunk: Buffer, _enc, done) => {
        stdinQueue.push({ data: chunk, done });
        void pump();
      },
      final: (done) => {
        stdinEnded = true;
        void pump();
        done();
      },
    });
    this.exit = (async () => {
      const session = await client.ready();
      const stream = session.openStream({
        exec: {
          argv: Array.isArray(command) ? command.map((a) => Buffer.from(a)) : [],
          shellCommand: Array.isArray(command) ? '' : command.shell,
          shell: !Array.isArray(command) && command.powershell ? v1.ShellKind.SHELL_KIND_POWERSHELL : v1.ShellKind.SHELL_KIND_DEFAULT,
          env: options.env ?? {},
          clearEnv: options.clearEnv ?? false,
          cwd: options.cwd ? Buffer.from(options.cwd) : Buffer.alloc(0),
          user: principal(options.user),
          group: principal(options.group),
          timeoutMs: options.timeoutMs ?? 0,
          stdin: options.stdin ?? false,
          secretEnv: options.secretEnv ?? [],
        },
      });
      this.stream = stream;
      for (const m of this.pendingControl.splice(0)) this.control(m);
      // Without stdin the host side stays open until the exit, so cancel and signals can still be sent.
      if (options.stdin) void pump();
      try {
        for await (const m of stream) {
          if (m.body === 'execStarted') markStarted(m.execStarted!.pid ?? 0);
          else if (m.body === 'execOutput') {
            const out = m.execOutput!.fd === v1.OutputStream.OUTPUT_STDERR ? this.stderr : this.stdout;
            // Backpressure: while the reader is behind, stop reading, so credit stops and the guest process waits.
            if (!out.write(bytesOf(m.execOutput!.data))) await new Promise((r) => out.once('drain', r));
          } else if (m.body === 'execExit') {
            const x = m.execExit!;
            this.endStream();
            this.stdout.end();
            this.stderr.end();
            return {
              code: x.exited ? x.code ?? 0 : null,
              signal: x.signal || null,
              durationMs: Number(x.durationMs ?? 0),
              timedOut: x.timedOut ?? false,
              cancelled: x.cancelled ?? false,
            };
          }
        }
        throw errors.protocol('the command ended without an exit status');
      } catch (err) {
        const e = PortholeError.from(err);
        failStarted(e);
        // The failure is reported once, through `exit`; the output streams just end.
        this.stdout.end();
        this.stderr.end();
        throw e;
      }
    })();
    this.exit.catch((e: unknown) => failStarted(e));
  }

  /** Deliver a signal to the command's process group. */
  signal(name: string): void {
    this.control({ execSignal: { signal: name } });
  }

  /** Stop the command (SIGTERM, then SIGKILL after a grace period). */
  cancel(reason = 'cancelled by the host'): void {
    this.control({ cancel: { reason } });
  }

  private endStream(): void {
    this.localEnded = true;
    this.stream?.end();
  }

  private control(message: v1.StreamMessage.$Properties): void {
    if (!this.stream) this.pendingControl.push(message);
    else if (!this.localEnded) void this.stream.send(message).catch(() => undefined);
    // Stdin was closed, which ends the host's side: only a reset can still stop the command (no exit status then).
    else if (message.cancel) this.stream.reset(errors.cancelled(message.cancel.reason ?? 'cancelled by the host'));
  }
}

/** Connect to a target: `unix:/path`, `libvirt:[URI/]DOMAIN`, `serial:/dev/ttyX`, `xen:DOMID`. */
export function connect(target: string, options?: ConnectOptions): Promise<PortholeClient> {
  return PortholeClient.connect(target, options);
}
