import * as net from 'node:net';
import { existsSync, unlinkSync, statSync } from 'node:fs';
import { Channel, ChannelBase, Connector } from './channel';
import { SlabReader } from './slab-pool';

/**
 * Bytes a socket channel queues before asking writers to wait, and the level
 * at which it lets them go on: before the queue is empty (the socket's own
 * 'drain'), so the next frames are encoded while the kernel is still being fed,
 * and shallow, so the small frames the session sends first are near the front.
 */
const SOCKET_HIGH_WATER = 128 * 1024;
const SOCKET_LOW_WATER = 32 * 1024;

/** A connected stream socket (the host side of a QEMU `-chardev socket`). */
export class SocketChannel extends ChannelBase {
  readonly kind = 'bytes' as const;
  private writersWaiting = false;

  /** `reader`: the socket was opened with its `onread` (see SlabReader); otherwise data comes as events. */
  constructor(private readonly socket: net.Socket, readonly description: string, reader?: SlabReader) {
    super();
    socket.setNoDelay?.(true);
    if (reader) reader.deliver = (chunk) => this.emit('data', chunk);
    else socket.on('data', (chunk: Buffer) => this.emit('data', chunk));
    socket.on('drain', this.written);
    socket.on('error', (err) => this.markClosed(new Error(`${description}: ${err.message}`, { cause: err })));
    socket.on('close', () => this.markClosed());
  }

  write(data: Buffer): boolean {
    return this.writeParts([data]);
  }

  writeParts(parts: readonly Buffer[]): boolean {
    if (this.closed) return false;
    this.socket.cork();
    for (let i = 0; i < parts.length - 1; i++) this.socket.write(parts[i]);
    this.socket.write(parts[parts.length - 1], this.written);
    this.socket.uncork();
    if (this.socket.writableLength < SOCKET_HIGH_WATER) return true;
    this.writersWaiting = true;
    return false;
  }

  /** After each write reaches the kernel: let waiting writers go on once the queue is down to the low mark. */
  private readonly written = (): void => {
    if (this.writersWaiting && this.socket.writableLength <= SOCKET_LOW_WATER) {
      this.writersWaiting = false;
      this.emit('drain');
    }
  };

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  close(): void {
    this.socket.destroy();
    this.markClosed();
  }
}

function explainConnectError(path: string, err: NodeJS.ErrnoException): Error {
  const reason =
    err.code === 'ENOENT' ? `no such socket: ${path} (is the VM running with a Porthole channel?)`
    : err.code === 'ECONNREFUSED' ? `nothing is listening on ${path} (the VM may have stopped)`
    : err.code === 'EACCES' ? `permission denied opening ${path}`
    : err.code === 'ENOTSOCK' ? `${path} is not a socket`
    : `cannot connect to ${path}: ${err.message}`;
  return Object.assign(new Error(reason, { cause: err }), { code: err.code });
}

export interface UnixSocketOptions {
  /** Listen on the path and accept the peer (when QEMU is the socket client). */
  listen?: boolean;
}

/**
 * Opens channels over a Unix socket: connects to it (QEMU's chardev is the
 * server) or, with `listen`, serves it and hands out each accepted connection.
 */
export class UnixSocketConnector implements Connector {
  readonly description: string;
  private server?: net.Server;
  private accepted: net.Socket[] = [];
  private waiting: Array<(s: net.Socket) => void> = [];

  constructor(readonly path: string, private readonly options: UnixSocketOptions = {}) {
    this.description = `unix:${path}`;
  }

  connect(signal?: AbortSignal): Promise<Channel> {
    return this.options.listen ? this.accept(signal) : this.dial(signal);
  }

  private dial(signal?: AbortSignal): Promise<Channel> {
    return new Promise((resolve, reject) => {
      const reader = new SlabReader();
      const socket = net.connect({ path: this.path, onread: reader.onread });
      const onAbort = () => {
        socket.destroy();
        reject(signal?.reason ?? new Error('aborted'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      socket.once('connect', () => {
        signal?.removeEventListener('abort', onAbort);
        socket.removeAllListeners('error');
        resolve(new SocketChannel(socket, this.description, reader));
      });
      socket.once('error', (err: NodeJS.ErrnoException) => {
        signal?.removeEventListener('abort', onAbort);
        reject(explainConnectError(this.path, err));
      });
    });
  }

  private async accept(signal?: AbortSignal): Promise<Channel> {
    await this.ensureServer();
    const next = this.accepted.shift();
    if (next) return new SocketChannel(next, this.description);
    return new Promise((resolve, reject) => {
      const take = (s: net.Socket) => {
        signal?.removeEventListener('abort', onAbort);
        resolve(new SocketChannel(s, this.description));
      };
      const onAbort = () => {
        this.waiting = this.waiting.filter((w) => w !== take);
        reject(signal?.reason ?? new Error('aborted'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(take);
    });
  }

  private ensureServer(): Promise<void> {
    if (this.server) return Promise.resolve();
    // A stale socket file from a previous run would make listen() fail with EADDRINUSE.
    if (existsSync(this.path) && statSync(this.path).isSocket()) unlinkSync(this.path);
    const server = net.createServer((s) => {
      const waiter = this.waiting.shift();
      if (waiter) waiter(s);
      else this.accepted.push(s);
    });
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', (err) => reject(new Error(`cannot listen on ${this.path}: ${err.message}`, { cause: err })));
      server.listen(this.path, () => resolve());
    });
  }

  /** Stop listening (listen mode); open channels stay open. */
  close(): void {
    this.server?.close();
    this.server = undefined;
    for (const s of this.accepted) s.destroy();
    this.accepted = [];
  }
}
