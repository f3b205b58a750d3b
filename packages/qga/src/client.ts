// A qemu-guest-agent client: its JSON commands over the org.qemu.guest_agent.0 port (a QEMU chardev
// socket or libvirt's qga channel). qemu-ga reads one command at a time and answers in order, with no
// ids, so commands go one at a time; after anything that may have left a reply unread (a timeout), the
// next command first resynchronises with guest-sync-delimited, whose answer qemu-ga precedes with 0xFF.
import * as net from 'node:net';

/** qemu-ga's own error answer: {"error": {"class": ..., "desc": ...}}. */
export class QgaError extends Error {
  constructor(readonly command: string, readonly errorClass: string, readonly desc: string) {
    super(`qemu-guest-agent: ${command}: ${errorClass}: ${desc}`);
    this.name = 'QgaError';
  }

  /**
   * The command is switched off in this guest (qemu-ga --block-rpcs / allow-rpcs): qemu-ga says
   * "The command X has been disabled for this instance" (GenericError, older versions CommandNotFound).
   */
  get disabled(): boolean {
    return /has been disabled/i.test(this.desc);
  }

  /** qemu-ga does not know the command (too old, or built without it). */
  get unknown(): boolean {
    return this.errorClass === 'CommandNotFound' && !this.disabled;
  }
}

export interface QgaExecResult {
  /** Exit code; undefined when a signal ended the process. */
  code?: number;
  signal?: number;
  stdout: Buffer;
  stderr: Buffer;
  /** qemu-ga keeps at most a fixed amount of each stream (16 MiB in current versions) and says when it dropped the rest. */
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** guest-exec-status calls it took. */
  polls: number;
}

export interface QgaExecOptions {
  env?: Record<string, string>;
  /** Written to the command's stdin (qemu-ga takes it whole, with the command). */
  input?: Buffer;
  /** Between guest-exec-status polls (qemu-ga cannot say when a process exits). */
  pollMs?: number;
  /** Give up polling after this long (the process keeps running in the guest). */
  timeoutMs?: number;
}

interface ExecStatus {
  exited: boolean;
  exitcode?: number;
  signal?: number;
  'out-data'?: string;
  'err-data'?: string;
  'out-truncated'?: boolean;
  'err-truncated'?: boolean;
}

const SYNC_BYTE = 0xff;
const NEWLINE = 0x0a;

/**
 * qemu-ga's commands however they reach it (its socket here; libvirt's qemu-agent-command elsewhere), and what
 * management tools build on them: files in base64 chunks, commands run and polled to their exit.
 */
export abstract class QgaCommands {
  /** Bytes of file data per guest-file-write / guest-file-read. */
  abstract readonly maxChunk: number;
  /** One command and its answer (qemu-ga's error answers reject with QgaError). */
  abstract command<T = unknown>(execute: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T>;
  abstract close(): void;

  /** Write a file the way management tools do: open, write base64 chunks, close. */
  async writeFile(path: string, data: Buffer, chunk = this.maxChunk, onProgress?: (bytes: number) => void): Promise<void> {
    const handle = await this.command<number>('guest-file-open', { path, mode: 'w' });
    try {
      for (let off = 0; off < data.length; off += chunk) {
        await this.command('guest-file-write', { handle, 'buf-b64': data.subarray(off, off + chunk).toString('base64') });
        onProgress?.(Math.min(off + chunk, data.length));
      }
    } finally {
      await this.command('guest-file-close', { handle });
    }
  }

  /** Read a file the same way: open, guest-file-read base64 chunks until EOF, close. */
  async readFile(path: string, chunk = this.maxChunk, onProgress?: (bytes: number) => void): Promise<Buffer> {
    const handle = await this.command<number>('guest-file-open', { path, mode: 'r' });
    const parts: Buffer[] = [];
    let bytes = 0;
    try {
      for (;;) {
        const r = await this.command<{ count: number; 'buf-b64': string; eof: boolean }>('guest-file-read', { handle, count: chunk });
        parts.push(Buffer.from(r['buf-b64'], 'base64'));
        bytes += r.count;
        onProgress?.(bytes);
        if (r.eof || r.count === 0) break;
      }
    } finally {
      await this.command('guest-file-close', { handle });
    }
    return Buffer.concat(parts);
  }

  /** guest-exec, then poll guest-exec-status until it exits (qemu-ga has no other way); output comes at the end. */
  async run(path: string, args: string[] = [], options: QgaExecOptions = {}): Promise<QgaExecResult> {
    const { pid } = await this.command<{ pid: number }>('guest-exec', {
      path, arg: args, 'capture-output': true,
      ...(options.env ? { env: Object.entries(options.env).map(([k, v]) => `${k}=${v}`) } : {}),
      ...(options.input ? { 'input-data': options.input.toString('base64') } : {}),
    });
    const deadline = options.timeoutMs ? Date.now() + options.timeoutMs : Infinity;
    for (let polls = 1; ; polls++) {
      const st = await this.command<ExecStatus>('guest-exec-status', { pid });
      if (st.exited) {
        return {
          code: st.exitcode, signal: st.signal, polls,
          stdout: Buffer.from(st['out-data'] ?? '', 'base64'), stderr: Buffer.from(st['err-data'] ?? '', 'base64'),
          stdoutTruncated: st['out-truncated'] ?? false, stderrTruncated: st['err-truncated'] ?? false,
        };
      }
      if (Date.now() >= deadline) throw new Error(`qemu-guest-agent: guest pid ${pid} still runs after ${options.timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, options.pollMs ?? 10));
    }
  }

  /** run() with the bench's older shape: exit code, stdout and the polls it took. */
  async exec(path: string, args: string[] = [], pollMs = 10): Promise<{ code: number; stdout: Buffer; polls: number }> {
    const r = await this.run(path, args, { pollMs });
    return { code: r.code ?? -1, stdout: r.stdout, polls: r.polls };
  }

}

/** qemu-ga over its port's socket (a QEMU chardev, or a libvirt channel no one else holds). */
export class QgaClient extends QgaCommands {
  readonly maxChunk = 1024 * 1024;
  private chunks: Buffer[] = [];
  private waiter?: { resolve: (line: string) => void; reject: (e: Error) => void };
  /** Until 0xFF arrives, everything read is left over from before a resync. */
  private discardUntilSync = false;
  private inSync = false;
  private queue: Promise<unknown> = Promise.resolve();
  private closedError?: Error;

  private constructor(private readonly socket: net.Socket, readonly path: string) {
    super();
    socket.on('data', (data: Buffer) => this.onData(data));
    socket.on('error', (err) => this.fail(new Error(`qemu-guest-agent channel ${path}: ${err.message}`)));
    socket.on('close', () => this.fail(new Error(`qemu-guest-agent channel ${path} closed`)));
  }

  /** Connect and synchronise; waits for a qemu-ga that is not up yet, up to timeoutMs. */
  static async connect(path: string, timeoutMs = 60000): Promise<QgaClient> {
    const socket = net.connect(path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const client = new QgaClient(socket, path);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await client.serial(() => client.sync(Math.min(2000, Math.max(200, deadline - Date.now()))));
        return client;
      } catch (err) {
        if (client.closedError || Date.now() >= deadline) {
          client.close();
          throw new Error(`qemu-guest-agent did not answer on ${path} within ${timeoutMs} ms (${(err as Error).message})`);
        }
      }
    }
  }

  private fail(err: Error): void {
    this.closedError ??= err;
    this.waiter?.reject(err);
    this.waiter = undefined;
  }

  private onData(data: Buffer): void {
    if (this.discardUntilSync) {
      const ff = data.lastIndexOf(SYNC_BYTE);
      if (ff < 0) return;
      this.discardUntilSync = false;
      this.chunks = [];
      data = data.subarray(ff + 1);
    }
    this.chunks.push(data);
    // Replies to guest-file-read are megabytes long: look for the newline in the new data only.
    if (!data.includes(NEWLINE)) return;
    let buffer = Buffer.concat(this.chunks);
    let nl: number;
    while ((nl = buffer.indexOf(NEWLINE)) >= 0) {
      const line = buffer.subarray(0, nl).toString('utf8').trim();
      buffer = buffer.subarray(nl + 1);
      if (!line) continue;
      const w = this.waiter;
      this.waiter = undefined;
      w?.resolve(line); // a reply nobody waits for is one whose command timed out; the next command resyncs
    }
    this.chunks = buffer.length ? [buffer] : [];
  }

  /** Runs `work` once the commands before it finished: qemu-ga handles one command at a time. */
  private serial<T>(work: () => Promise<T>): Promise<T> {
    const run = this.queue.then(work, work);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private roundTrip(request: object, command: string, timeoutMs: number): Promise<unknown> {
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        this.inSync = false;
        reject(new Error(`qemu-guest-agent: no answer to ${command} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = {
        resolve: (line) => {
          clearTimeout(timer);
          let reply: { return?: unknown; error?: { class?: string; desc?: string } };
          try {
            reply = JSON.parse(line);
          } catch {
            this.inSync = false;
            return reject(new Error(`qemu-guest-agent: ${command}: an answer that is not JSON`));
          }
          if (reply.error) reject(new QgaError(command, reply.error.class ?? 'GenericError', reply.error.desc ?? ''));
          else resolve(reply.return);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.socket.write(JSON.stringify(request) + '\n');
    });
  }

  /** guest-sync-delimited: 0xFF first flushes any half command qemu-ga holds from an earlier client. */
  private async sync(timeoutMs: number): Promise<void> {
    const id = Math.floor(Math.random() * 2 ** 31);
    this.discardUntilSync = true;
    this.chunks = [];
    this.socket.write(Buffer.from([SYNC_BYTE]));
    const got = await this.roundTrip({ execute: 'guest-sync-delimited', arguments: { id } }, 'guest-sync-delimited', timeoutMs);
    if (got !== id) throw new Error(`qemu-guest-agent answered sync ${id} with ${JSON.stringify(got)}`);
    this.inSync = true;
  }

  override command<T = unknown>(execute: string, args?: Record<string, unknown>, timeoutMs = 60000): Promise<T> {
    return this.serial(async () => {
      if (!this.inSync) await this.sync(Math.min(timeoutMs, 5000));
      return (await this.roundTrip(args ? { execute, arguments: args } : { execute }, execute, timeoutMs)) as T;
    });
  }

  override close(): void {
    this.socket.destroy();
  }
}
