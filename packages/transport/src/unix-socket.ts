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

  writeParts(parts: readonly Buffer[], written?: () => void): boolean {
    if (this.closed) return false;
    this.socket.cork();
    for (let i = 0; i < parts.length - 1; i++) this.socket.write(parts[i]);
    // Node calls a write's callback once it is done (or failed): the writes before it are done by then.
    this.socket.write(parts[parts.length - 1], written ? () => { this.written(); written(); } : this.written);
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
  // path: a socket path, a named pipe or HOST:PORT
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

/** Where a stream socket is: a Unix socket (or, on Windows, a named pipe \\.\pipe\NAME) or a TCP address. */
export type SocketAddress = { path: string } | { host: string; port: number };

/**
 * Opens channels over a stream socket: connects to it (QEMU's chardev is the
 * server) or, with `listen`, serves it and hands out each accepted connection.
 */
export class SocketConnector implements Connector {
  private server?: net.Server;
  private accepted: net.Socket[] = [];
  private waiting: Array<(s: net.Socket) => void> = [];
  private readonly where: string;

  constructor(readonly address: SocketAddress, readonly description: string, private readonly options: UnixSocketOptions = {}) {
    this.where = 'path' in address ? address.path : `${address.host}:${address.port}`;
  }

  connect(signal?: AbortSignal): Promise<Channel> {
    return this.options.listen ? this.accept(signal) : this.dial(signal);
  }

  private dial(signal?: AbortSignal): Promise<Channel> {
    return new Promise((resolve, reject) => {
      const reader = new SlabReader();
      const socket = net.connect({ ...this.address, onread: reader.onread });
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
        reject(explainConnectError(this.where, err));
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
    const path = 'path' in this.address ? this.address.path : undefined;
    if (path && existsSync(path) && statSync(path).isSocket()) unlinkSync(path);
    const server = net.createServer((s) => {
      const waiter = this.waiting.shift();
      if (waiter) waiter(s);
      else this.accepted.push(s);
    });
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', (err) => reject(new Error(`cannot listen on ${this.where}: ${err.message}`, { cause: err })));
      server.listen(this.address, () => resolve());
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

/** A Unix socket (on Windows, a named pipe path works the same way). */
export class UnixSocketConnector extends SocketConnector {
  constructor(readonly path: string, options: UnixSocketOptions = {}) {
    super({ path }, `unix:${path}`, options);
  }
}

/**
 * A TCP socket on a loopback address only: a channel is a way into the VM, so it
 * must never be reachable from a network (a Windows test rig under Wine uses it
 * where the VM would use virtio-serial).
 */
export class LoopbackTcpConnector extends SocketConnector {
  constructor(host: string, port: number, options: UnixSocketOptions = {}) {
    if (!isLoopback(host)) throw new Error(`tcp channels are for loopback addresses only (127.0.0.0/8, ::1, localhost), not ${host}`);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`bad TCP port ${port}`);
    super({ host, port }, `tcp:${host.includes(':') ? `[${host}]` : host}:${port}`, options);
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || net.isIPv4(host) && host.startsWith('127.');
}

/** `HOST:PORT` or `[V6]:PORT`, as a tcp channel or target gives it. */
export function parseHostPort(spec: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(spec);
  if (!m) throw new Error(`expected HOST:PORT, got ${JSON.stringify(spec)}`);
  return { host: m[1] ?? m[2], port: Number(m[3]) };
}
