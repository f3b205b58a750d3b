// QMP (QEMU Machine Protocol) client over a Unix socket: one JSON object per
// line, a greeting, capabilities negotiation, then commands matched to replies
// by id, with asynchronous events in between.
import { EventEmitter } from 'node:events';
import * as net from 'node:net';

/** Longest line accepted from QEMU (query-block of a VM with many drives is far below this). */
const MAX_LINE = 16 * 1024 * 1024;

export interface QmpGreeting {
  version?: { qemu?: { major: number; minor: number; micro: number }; package?: string };
  capabilities?: string[];
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpConnectOptions {
  /** Limit for the greeting and for each command's reply (default 10 s). */
  timeoutMs?: number;
  /**
   * Keep retrying while the socket is missing or refuses connections, up to this
   * long (QEMU creates it a moment after it starts). Default 0: fail at once.
   */
  retryForMs?: number;
}

/** QEMU answered a command with an error. */
export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`QMP error ${errorClass}: ${desc} (command ${command})`);
    this.name = 'QmpError';
  }
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

function connectOnce(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(path);
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

async function connectWithRetry(path: string, retryForMs: number): Promise<net.Socket> {
  const deadline = Date.now() + retryForMs;
  for (;;) {
    try {
      return await connectOnce(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const retriable = code === 'ENOENT' || code === 'ECONNREFUSED';
      if (!retriable || Date.now() >= deadline) throw new Error(`QMP ${path}: connect failed: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/**
 * A QMP connection. Events are emitted as `'event'` (a QmpEvent) and under their
 * own name (e.g. `'SHUTDOWN'`); `'close'` when the connection ends (QEMU exited
 * or close() was called). Commands pending then are rejected.
 */
export class QmpClient extends EventEmitter {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private buffered = '';
  private failure?: Error;
  private onGreeting?: (g: QmpGreeting) => void;
  greeting: QmpGreeting = {};

  private constructor(
    readonly path: string,
    private readonly socket: net.Socket,
    private readonly timeoutMs: number,
  ) {
    super();
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.fail(new Error(`QMP ${path}: ${err.message}`)));
    socket.on('close', () => {
      this.fail(new Error(`QMP ${path}: connection closed`));
      this.emit('close');
    });
  }

  /** Connect, read the greeting and leave capabilities negotiation mode. */
  static async connect(path: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    const socket = await connectWithRetry(path, options.retryForMs ?? 0);
    const client = new QmpClient(path, socket, timeoutMs);
    try {
      client.greeting = await new Promise<QmpGreeting>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`QMP ${path}: no greeting within ${timeoutMs} ms`)), timeoutMs);
        client.onGreeting = (g) => {
          clearTimeout(timer);
          resolve(g);
        };
        client.once('close', () => {
          clearTimeout(timer);
          reject(client.failure);
        });
      });
      client.onGreeting = undefined;
      await client.execute('qmp_capabilities');
    } catch (err) {
      client.close();
      throw err;
    }
    return client;
  }

  get closed(): boolean {
    return this.failure !== undefined;
  }

  /** Run a command; resolves with its `return` value, rejects with a QmpError or a connection error. */
  // The return value's shape depends on the command.
  execute(command: string, args?: Record<string, unknown>, timeoutMs = this.timeoutMs): Promise<any> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`QMP ${this.path}: no reply to ${command} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve, reject, timer });
      this.socket.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
    });
  }

  /** Resolves with the next event of that name (rejects on timeout or when the connection ends). */
  waitForEvent(name: string, timeoutMs = this.timeoutMs): Promise<QmpEvent> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.off(name, onEvent);
        this.off('close', onClose);
      };
      const onEvent = (e: QmpEvent) => {
        done();
        resolve(e);
      };
      const onClose = () => {
        done();
        reject(new Error(`QMP ${this.path}: connection closed while waiting for event ${name}`));
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`QMP ${this.path}: no ${name} event within ${timeoutMs} ms`));
      }, timeoutMs);
      this.on(name, onEvent);
      this.once('close', onClose);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(this.failure);
    }
    this.pending.clear();
  }

  private onData(chunk: string): void {
    this.buffered += chunk;
    let nl: number;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl).trim();
      this.buffered = this.buffered.slice(nl + 1);
      if (line) this.onMessage(line);
      if (this.failure) return;
    }
    if (this.buffered.length > MAX_LINE) this.protocolError(`a line longer than ${MAX_LINE} bytes`);
  }

  private protocolError(what: string): void {
    this.fail(new Error(`QMP ${this.path}: ${what} from the peer (is it a QMP socket?)`));
    this.socket.destroy();
  }

  private onMessage(line: string): void {
    let msg: {
      QMP?: QmpGreeting;
      id?: unknown;
      return?: unknown;
      error?: { class?: string; desc?: string };
      event?: string;
    };
    try {
      msg = JSON.parse(line);
    } catch {
      return this.protocolError('a line that is not JSON');
    }
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) return this.protocolError('a JSON value that is not an object');
    if (msg.QMP !== undefined) {
      this.onGreeting?.(msg.QMP);
      return;
    }
    if (typeof msg.event === 'string') {
      const event = msg as QmpEvent;
      this.emit('event', event);
      this.emit(event.event, event);
      return;
    }
    const p = typeof msg.id === 'number' ? this.pending.get(msg.id) : undefined;
    if (!p) return; // a reply to a command that timed out
    this.pending.delete(msg.id as number);
    clearTimeout(p.timer);
    if (msg.error) p.reject(new QmpError(p.command, msg.error.class ?? 'unknown class', msg.error.desc ?? 'no description'));
    else p.resolve(msg.return);
  }
}
