import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { promises as fsp, constants as fsc } from 'node:fs';

/** Where xenstored listens for dom0 tools (libxenstore's default). */
export const DEFAULT_XENSTORED_SOCKET = '/var/run/xenstored/socket';
/** The guest kernel's xenstore device (xenbus_dev_frontend). */
export const DEFAULT_XENBUS_DEVICE = '/dev/xen/xenbus';

/**
 * The byte pipe under a xenstore client. `write` gets exactly one whole
 * message each time: the guest device requires that (xenbus_dev_frontend
 * treats a write as at most one message).
 */
export interface XsTransport extends EventEmitter {
  readonly description: string;
  write(message: Buffer): void;
  close(): void;
  on(event: 'data', listener: (chunk: Buffer) => void): this;
  on(event: 'close', listener: (error?: Error) => void): this;
}

class SocketTransport extends EventEmitter implements XsTransport {
  private closed = false;

  constructor(private readonly socket: net.Socket, readonly description: string) {
    super();
    socket.on('data', (chunk: Buffer) => this.emit('data', chunk));
    socket.on('error', (err) => this.finish(new Error(`${description}: ${err.message}`, { cause: err })));
    socket.on('close', () => this.finish());
  }

  write(message: Buffer): void {
    if (!this.closed) this.socket.write(message);
  }

  close(): void {
    this.socket.destroy();
    this.finish();
  }

  private finish(error?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.emit('close', error);
  }
}

/** Connect to xenstored's Unix socket (dom0 side). */
export function connectSocket(path: string): Promise<XsTransport> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(path);
    socket.once('connect', () => {
      socket.removeAllListeners('error');
      resolve(new SocketTransport(socket, `xenstore:${path}`));
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      const why =
        err.code === 'ENOENT' ? `no xenstored socket at ${path} (is xenstored running? XENSTORED_PATH overrides the path)`
        : err.code === 'ECONNREFUSED' ? `nothing is listening on ${path} (xenstored stopped?)`
        : err.code === 'EACCES' ? `permission denied opening ${path} (dom0 root only)`
        : `cannot connect to xenstored at ${path}: ${err.message}`;
      reject(Object.assign(new Error(why, { cause: err }), { code: err.code }));
    });
  });
}

const READ_SIZE = 64 * 1024;

/**
 * The guest's xenbus device. A character device, so it is read with blocking
 * fs reads in libuv's thread pool (one read outstanding at a time) and written
 * one message per write.
 */
class DeviceTransport extends EventEmitter implements XsTransport {
  private closed = false;
  private writing: Promise<void> = Promise.resolve();

  constructor(private readonly handle: fsp.FileHandle, readonly description: string) {
    super();
    void this.readLoop();
  }

  private async readLoop(): Promise<void> {
    const buffer = Buffer.allocUnsafe(READ_SIZE);
    while (!this.closed) {
      let n: number;
      try {
        ({ bytesRead: n } = await this.handle.read(buffer, 0, READ_SIZE, null));
      } catch (err) {
        this.finish(new Error(`${this.description}: read failed: ${(err as Error).message}`, { cause: err }));
        return;
      }
      if (n === 0) {
        this.finish(new Error(`${this.description}: end of file`));
        return;
      }
      this.emit('data', Buffer.from(buffer.subarray(0, n)));
    }
  }

  write(message: Buffer): void {
    if (this.closed) return;
    this.writing = this.writing.then(async () => {
      if (this.closed) return;
      try {
        let off = 0;
        while (off < message.length) {
          const { bytesWritten } = await this.handle.write(message, off, message.length - off, null);
          off += bytesWritten;
        }
      } catch (err) {
        this.finish(new Error(`${this.description}: write failed: ${(err as Error).message}`, { cause: err }));
      }
    });
  }

  close(): void {
    this.finish();
  }

  private finish(error?: Error): void {
    if (this.closed) return;
    this.closed = true;
    void this.handle.close().catch(() => undefined);
    this.emit('close', error);
  }
}

/** Open the guest's xenbus device (or anything that speaks the same protocol through a file, e.g. a raw pty). */
export async function openDevice(path: string): Promise<XsTransport> {
  try {
    const handle = await fsp.open(path, fsc.O_RDWR | fsc.O_NOCTTY);
    return new DeviceTransport(handle, `xenbus:${path}`);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why =
      e.code === 'ENOENT' ? `no xenbus device at ${path} (not a Xen guest, or xenfs/xen_gntdev not loaded?)`
      : e.code === 'EACCES' ? `permission denied opening ${path} (run as root)`
      : `cannot open ${path}: ${e.message}`;
    throw Object.assign(new Error(why, { cause: err }), { code: e.code });
  }
}
