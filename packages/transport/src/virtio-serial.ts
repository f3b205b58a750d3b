import { promises as fsp, readdirSync, readFileSync, existsSync, constants as fsc } from 'node:fs';
import { join } from 'node:path';
import { Channel, ChannelBase, Connector } from './channel';

export const DEFAULT_PORT_NAME = 'org.porthole.agent.0';

/**
 * Find the character device of a named virtio-serial port: the udev symlink
 * /dev/virtio-ports/<name> when present, else by scanning sysfs (a bare
 * devtmpfs has no symlinks).
 */
export function findVirtioPort(name: string, roots = { dev: '/dev', sys: '/sys/class/virtio-ports' }): string {
  const link = join(roots.dev, 'virtio-ports', name);
  if (existsSync(link)) return link;
  let entries: string[] = [];
  try {
    entries = readdirSync(roots.sys);
  } catch {
    throw new Error(`no virtio-serial ports in this VM (${roots.sys} missing: is virtio_console loaded?)`);
  }
  for (const entry of entries) {
    try {
      if (readFileSync(join(roots.sys, entry, 'name'), 'utf8').trim() === name) return join(roots.dev, entry);
    } catch {
      // a port without a name file is not ours
    }
  }
  const names = entries
    .map((e) => { try { return readFileSync(join(roots.sys, e, 'name'), 'utf8').trim(); } catch { return ''; } })
    .filter(Boolean);
  throw new Error(`no virtio-serial port named ${name} (ports here: ${names.join(', ') || 'none'})`);
}

const READ_SIZE = 256 * 1024;
/** While no host is connected a read returns EOF at once: wait this long before the next read. */
const IDLE_BACKOFF_MS = [10, 50, 100, 200];
/** Buffers handed to one writev (below IOV_MAX). */
const MAX_WRITEV_PARTS = 256;
const HIGH_WATER_MARK = 1024 * 1024;

/**
 * The guest side of a virtio-serial port. It is a character device, not a
 * TTY, so it is read with plain fs reads (blocking reads in libuv's thread
 * pool). The guest driver hands out one 4 KiB buffer per read(), so the next
 * read is always under way while the main thread handles the last one.
 * Writes queued while one is in flight leave together in one writev. The
 * channel outlives host connections: when the host side goes away, reads
 * return EOF until it is back; the channel then emits 'discontinuity' and
 * polls slowly instead of spinning.
 */
export class VirtioSerialChannel extends ChannelBase {
  readonly kind = 'bytes' as const;
  readonly description: string;
  private queue: Buffer[] = [];
  private queuedBytes = 0;
  private flushing = false;

  private constructor(private readonly handle: fsp.FileHandle, readonly path: string) {
    super();
    this.description = `virtio-serial:${path}`;
    void this.readLoop();
  }

  static async open(path: string): Promise<VirtioSerialChannel> {
    const handle = await fsp.open(path, fsc.O_RDWR | fsc.O_NOCTTY);
    return new VirtioSerialChannel(handle, path);
  }

  private async readLoop(): Promise<void> {
    const buffer = Buffer.allocUnsafe(READ_SIZE);
    const read = () => this.handle.read(buffer, 0, READ_SIZE, null);
    let pending = read();
    let idle = 0;
    while (!this.closed) {
      let n: number;
      try {
        ({ bytesRead: n } = await pending);
      } catch (err) {
        if (this.closed) return;
        this.markClosed(new Error(`${this.description}: read failed: ${(err as Error).message}`, { cause: err }));
        return;
      }
      if (this.closed) return;
      if (n > 0) {
        idle = 0;
        const data = Buffer.from(buffer.subarray(0, n));
        pending = read();
        this.emit('data', data);
        continue;
      }
      if (idle === 0) this.emit('discontinuity');
      const delay = IDLE_BACKOFF_MS[Math.min(idle, IDLE_BACKOFF_MS.length - 1)];
      idle++;
      await new Promise((r) => setTimeout(r, delay));
      pending = read();
    }
  }

  writeParts(parts: readonly Buffer[]): boolean {
    let ok = true;
    for (const part of parts) ok = this.write(part);
    return ok;
  }

  write(data: Buffer): boolean {
    if (this.closed) return false;
    this.queue.push(data);
    this.queuedBytes += data.length;
    if (!this.flushing) void this.flush();
    return this.queuedBytes < HIGH_WATER_MARK;
  }

  /** One writev in flight at a time; what was queued meanwhile goes in the next one. */
  private async flush(): Promise<void> {
    this.flushing = true;
    try {
      while (this.queue.length && !this.closed) {
        const batch = this.queue.splice(0, MAX_WRITEV_PARTS);
        const size = batch.reduce((n, b) => n + b.length, 0);
        await this.writeAll(batch);
        const before = this.queuedBytes;
        this.queuedBytes -= size;
        if (before >= HIGH_WATER_MARK && this.queuedBytes < HIGH_WATER_MARK) this.emit('drain');
      }
    } catch (err) {
      this.markClosed(new Error(`${this.description}: write failed: ${(err as Error).message}`, { cause: err }));
    } finally {
      this.flushing = false;
    }
  }

  private async writeAll(parts: Buffer[]): Promise<void> {
    while (parts.length && !this.closed) {
      let { bytesWritten: written } = await this.handle.writev(parts);
      while (written > 0 && parts.length) {
        if (written >= parts[0].length) written -= parts.shift()!.length;
        else {
          parts[0] = parts[0].subarray(written);
          written = 0;
        }
      }
    }
  }

  close(): void {
    if (this.closed) return;
    this.markClosed();
    void this.handle.close().catch(() => undefined);
  }
}

/** Opens the guest's end of a named virtio-serial port (or a given device path). */
export class VirtioSerialConnector implements Connector {
  readonly description: string;

  constructor(private readonly target: { name?: string; path?: string } = {}) {
    this.description = `virtio-serial:${target.path ?? target.name ?? DEFAULT_PORT_NAME}`;
  }

  async connect(): Promise<Channel> {
    const path = this.target.path ?? findVirtioPort(this.target.name ?? DEFAULT_PORT_NAME);
    return VirtioSerialChannel.open(path);
  }
}
