import { promises as fsp, readdirSync, readFileSync, existsSync, constants as fsc } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
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

/** Buffers handed to one writev (below IOV_MAX). */
const MAX_WRITEV_PARTS = 256;
const HIGH_WATER_MARK = 1024 * 1024;

/**
 * The reading thread (a worker, so it is plain JS that bundles and runs in a
 * single executable). It reads with the asynchronous fs API so that its own
 * event loop still hears the main thread. A read waiting for the host cannot
 * be cancelled, and process.exit() would wait for it: the agent therefore ends
 * by its stop signal (see main.ts). Bytes read while the main thread is busy
 * collect in one batch buffer; the next batch leaves when the main thread has
 * taken the last one (its 'taken' message), so a busy main thread gets fewer,
 * larger batches instead of a message per 4 KiB.
 */
const READER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
const BATCH = ${1024 * 1024};
const READ = ${64 * 1024};
const IDLE_BACKOFF_MS = [10, 50, 100, 200];
// Reads land in their own buffer and are copied into the batch: the batch may be handed over
// while a read is waiting for the host, and that read must not write into a buffer already sent.
const readBuffer = new Uint8Array(READ);
const batch = new Uint8Array(BATCH);
let used = 0;
let handedOver = true;
let reading = false;
let idle = 0;
let stopped = false;
function offer() {
  if (!handedOver || used === 0) return;
  handedOver = false;
  // Sent as an exact-size copy: batches are often one 4 KiB read, and a fresh 1 MiB buffer each would cost more than the copy.
  const out = batch.slice(0, used);
  parentPort.postMessage({ bytes: out.buffer }, [out.buffer]);
  used = 0;
}
function read() {
  // A full batch waits for the main thread: the port's own queue (and the protocol's credit) hold the rest.
  if (stopped || reading || BATCH - used < READ) return;
  reading = true;
  fs.read(workerData.fd, readBuffer, 0, READ, null, (err, n) => {
    reading = false;
    if (err) { stopped = true; parentPort.postMessage({ error: err.message }); return; }
    if (n > 0) { idle = 0; batch.set(readBuffer.subarray(0, n), used); used += n; offer(); read(); return; }
    // EOF: no host on the other side. Say so once, then poll slowly until it is back.
    // What came before the EOF must reach the main thread before the EOF does.
    if (idle === 0) { if (used) { handedOver = true; offer(); } parentPort.postMessage({ eof: true }); }
    setTimeout(read, IDLE_BACKOFF_MS[Math.min(idle++, IDLE_BACKOFF_MS.length - 1)]);
  });
}
parentPort.on('message', () => { handedOver = true; offer(); read(); });
read();
`;

/**
 * The guest side of a virtio-serial port. It is a character device, not a
 * TTY, so it is read with plain fs reads. The guest driver hands out one
 * 4 KiB buffer per read(), each a thread-pool round trip (about 0.5 ms under
 * TCG), so the reads run in their own thread and keep going while the main
 * thread works on what came before; they reach it in batches. Writes queued
 * while one is in flight leave together in one writev. The channel outlives
 * host connections: when the host side goes away, reads return EOF until it
 * is back; the channel then emits 'discontinuity' and polls slowly instead of
 * spinning.
 */
export class VirtioSerialChannel extends ChannelBase {
  readonly kind = 'bytes' as const;
  readonly description: string;
  private queue: Buffer[] = [];
  private queuedBytes = 0;
  private flushing = false;
  private readonly reader: Worker;

  private constructor(private readonly handle: fsp.FileHandle, readonly path: string) {
    super();
    this.description = `virtio-serial:${path}`;
    this.reader = new Worker(READER_SOURCE, { eval: true, workerData: { fd: handle.fd } });
    this.reader.on('message', this.onReaderMessage);
    this.reader.on('error', (err) => this.markClosed(new Error(`${this.description}: reader failed: ${err.message}`, { cause: err })));
  }

  static async open(path: string): Promise<VirtioSerialChannel> {
    const handle = await fsp.open(path, fsc.O_RDWR | fsc.O_NOCTTY);
    return new VirtioSerialChannel(handle, path);
  }

  private readonly onReaderMessage = (m: { bytes?: ArrayBuffer; eof?: boolean; error?: string }): void => {
    if (this.closed) return;
    if (m.bytes) {
      this.emit('data', Buffer.from(m.bytes));
      this.reader.postMessage('taken');
    } else if (m.eof) {
      this.emit('discontinuity');
    } else if (m.error) {
      this.markClosed(new Error(`${this.description}: read failed: ${m.error}`));
    }
  };

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
    void this.reader.terminate();
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
