import { closeSync, openSync, readSync, readdirSync, readFileSync, existsSync, writeSync, constants as fsc } from 'node:fs';
import { Socket, SocketConstructorOpts } from 'node:net';
import { join } from 'node:path';
import { getSystemErrorName } from 'node:util';
import { Channel, ChannelBase, Connector } from './channel';
import { SlabReader } from './slab-pool';

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

/** Bytes queued (in the socket, or here while no host is connected) before write() says wait. */
const HIGH_WATER_MARK = 1024 * 1024;
/** While no host is connected the port reads EOF at once: it is read again after these pauses. */
const IDLE_BACKOFF_MS = [10, 50, 100, 200];
/**
 * Writes the port still held when the host left keep a hung-up port polling without pause (its HUP
 * never clears): after this long without a host the port is closed with them and opened again.
 */
const STALE_WRITES_MS = 100;

interface PipeHandle {
  open(fd: number): number;
  readStart(): number;
  reading: boolean;
  onread: (...args: unknown[]) => unknown;
}
type PipeWrap = { Pipe: new (type: number) => PipeHandle; constants: { SOCKET: number } };

/**
 * Node's public API cannot poll a character device (net.Socket refuses an fd
 * it cannot classify); libuv can. The Pipe handle (process.binding, kept for
 * compatibility by Node 20 and later) opens any pollable descriptor as a libuv stream.
 */
function pipeHandle(fd: number): PipeHandle {
  const { Pipe, constants } = (process as unknown as { binding(name: 'pipe_wrap'): PipeWrap }).binding('pipe_wrap');
  const handle = new Pipe(constants.SOCKET);
  const err = handle.open(fd);
  if (err) throw new Error(`cannot poll it (${getSystemErrorName(err)})`);
  return handle;
}

type ReadInto = (fd: number, into: Buffer, offset: number, length: number) => number;

/**
 * fs's own read, without readSync's argument checks: a burst is read 4 KiB per call, and under TCG those
 * checks, interpreted, cost twice the read itself (16,384 reads of 4 KiB in the guest: 400 ms through
 * readSync, 135 ms straight). Taken only where readSync itself makes that five-argument call, which throws
 * on error (Node 20.20 here); a Node whose readSync calls its binding otherwise, or has no process.binding('fs'),
 * reads through readSync.
 */
const readInto: ReadInto = (() => {
  const viaReadSync: ReadInto = (fd, into, offset, length) => readSync(fd, into, offset, length, null);
  try {
    if (!/binding\.read\(fd, buffer, offset, length, position\);/.test(readSync.toString())) return viaReadSync;
    const binding = (process as unknown as { binding(name: 'fs'): { read?: (...args: unknown[]) => number } }).binding('fs');
    const read = binding.read;
    if (typeof read !== 'function') return viaReadSync;
    return (fd, into, offset, length) => read(fd, into, offset, length, -1);
  } catch {
    return viaReadSync;
  }
})();

/** A direct read is tried while this much room is left (the driver's reads are at most 4 KiB). */
const BURST_READ_MIN = 4096;

/** Frames up to this size are written as one buffer (one copy is cheaper than another write). */
const JOIN_BELOW = 64 * 1024;

/**
 * The guest side of a virtio-serial port. It is a character device, not a
 * TTY: it is opened with fs and polled by the event loop like a pipe; once
 * it is readable, the rest of the burst is read directly (see readBurst), so
 * JavaScript runs once per burst, not per 4 KiB (a thread-pool round trip
 * per read costs ~0.4 ms under TCG). While no host is connected the port reads EOF: the channel
 * emits 'discontinuity' and reads again after a pause, so it neither spins nor ends; what is
 * written meanwhile waits for the next host.
 *
 * The port stays open when the host hangs up. Closing it would drop what the guest holds of the next
 * host's bytes, and the guest can see them before it sees the hang-up: QEMU's "host left" and "host
 * came" arrive on the control queue, the data on its own, and the guest driver reads EOF from a port
 * whose host it believes gone (a host that connected 90 ms after another one left lost its first
 * request that way, while the agent had read its hello).
 */
export class VirtioSerialChannel extends ChannelBase {
  readonly kind = 'bytes' as const;
  readonly description: string;
  private socket?: Socket;
  /** Written while there was no port or no host. */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private idle = 0;
  /** The port read EOF: no host (writes wait in `pending`) until a read says otherwise. */
  private hostAbsentSince?: number;
  /** The last event-loop read delivered bytes (one without them may have been an EOF). */
  private delivered = false;
  private probeTimer?: NodeJS.Timeout;
  /** Small frames written in this run of JavaScript, sent together when it ends (see writeParts). */
  private batch: Buffer[] = [];
  private batchBytes = 0;
  private batchOwesDrain = false;
  private readonly reader = new SlabReader();
  /** Reading is paused (kept across a reopen of the port, and while no host is connected). */
  private paused = false;
  /** The open port's descriptor (non-blocking), read directly for the rest of a burst. */
  private fd = -1;

  private constructor(readonly path: string) {
    super();
    this.description = `virtio-serial:${path}`;
    this.reader.deliver = (chunk) => {
      this.delivered = true;
      this.emit('data', chunk);
    };
    this.reader.more = (into) => this.readBurst(into);
  }

  /**
   * After the event loop's read, the rest of what the port holds, by direct reads until it would block:
   * the driver hands out at most 4 KiB per read, and one event-loop round trip plus a 'data' event per
   * 4 KiB held the port to a sixth of its speed (docs/BENCHMARKS.md). EOF and errors are left to the
   * event loop's next read, which sees them again.
   */
  private readBurst(into: Buffer): number {
    let got = 0;
    while (into.length - got >= BURST_READ_MIN) {
      let n: number;
      try {
        n = readInto(this.fd, into, got, into.length - got);
      } catch {
        break; // EAGAIN: drained
      }
      if (n === 0) break;
      got += n;
    }
    return got;
  }

  static open(path: string): VirtioSerialChannel {
    const channel = new VirtioSerialChannel(path);
    channel.attach();
    return channel;
  }

  /** Opens the port; throws when it cannot be opened. */
  private attach(): void {
    const fd = openSync(this.path, fsc.O_RDWR | fsc.O_NOCTTY | fsc.O_NONBLOCK);
    let handle: PipeHandle;
    try {
      handle = pipeHandle(fd);
    } catch (e) {
      closeSync(fd);
      throw new Error(`${this.description}: ${(e as Error).message}`);
    }
    this.fd = fd;
    // Reads land one after another in a slab: a frame that came in many 4 KiB reads is one view, not a copy.
    const socket = new Socket({
      handle, readable: true, writable: true, allowHalfOpen: true, writableHighWaterMark: HIGH_WATER_MARK, onread: this.reader.onread,
    } as SocketConstructorOpts);
    this.socket = socket;
    if (this.paused) socket.pause();
    socket.on('drain', () => this.emit('drain'));
    socket.on('error', (e) => this.markClosed(new Error(`${this.description}: ${e.message}`, { cause: e })));
    // Node ends a socket at its first EOF and says nothing of later ones; a port reads EOF whenever its
    // host hangs up and bytes again once one connects. A read that delivered nothing is checked here.
    const nodeOnRead = handle.onread;
    handle.onread = (...args: unknown[]) => {
      this.delivered = false;
      const next = nodeOnRead.apply(handle, args);
      if (!this.delivered && this.socket === socket) this.readDirect(socket, handle);
      return next;
    };
    if (this.hostAbsentSince === undefined) this.flushPending(socket);
  }

  /**
   * One read outside the event loop, after an event-loop read that delivered nothing or after a pause
   * without a host: EOF means still no host; bytes or EAGAIN mean a host, and reading goes on.
   */
  private readDirect(socket: Socket, handle: PipeHandle): void {
    clearTimeout(this.probeTimer);
    if (this.closed || this.socket !== socket) return;
    const into = (this.reader.onread.buffer as () => Uint8Array)();
    let n: number;
    try {
      n = readSync(this.fd, into, 0, into.length, null);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') {
        this.markClosed(new Error(`${this.description}: ${(e as Error).message}`, { cause: e }));
        socket.destroy();
        return;
      }
      n = -1;
    }
    if (n === 0) return this.hostGone(socket, handle);
    if (this.hostAbsentSince !== undefined) {
      this.hostAbsentSince = undefined;
      this.flushPending(socket);
    }
    // libuv stopped reading at the EOF it saw, if it saw one (a second start is refused, harmlessly).
    if (!this.paused) {
      handle.reading = true;
      handle.readStart();
    }
    if (n > 0) this.reader.onread.callback(n, into);
  }

  /** EOF: no host on the other side. Said once; the port is read again after a pause until one is back. */
  private hostGone(socket: Socket, handle: PipeHandle): void {
    handle.reading = false;
    if (this.hostAbsentSince === undefined) {
      this.hostAbsentSince = Date.now();
      this.idle = 0;
      this.emit('discontinuity');
    } else if (socket.writableLength > 0 && Date.now() - this.hostAbsentSince >= STALE_WRITES_MS) {
      // What the port held for the host that left goes with the port (the next host would not know it).
      this.socket = undefined;
      socket.destroy();
      try {
        this.attach();
      } catch (e) {
        this.markClosed(new Error(`${this.description}: cannot reopen: ${(e as Error).message}`, { cause: e }));
      }
      return;
    }
    const delay = IDLE_BACKOFF_MS[Math.min(this.idle++, IDLE_BACKOFF_MS.length - 1)];
    this.probeTimer = setTimeout(() => this.readDirect(socket, handle), delay);
  }

  /** What was written while there was no port or no host goes out. */
  private flushPending(socket: Socket): void {
    const parts = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    if (parts.length) this.writeParts(parts);
    // A writer that waited (for the port, or for a host) may go on.
    if (socket.writable && !socket.writableNeedDrain) this.emit('drain');
  }

  /**
   * The guest kernel's virtio console has no writev: every part of a writev is a write of its own, each
   * a buffer the host is notified of, and each write costs the guest ~1 ms under TCG. So small frames
   * written in one run of JavaScript and the promises it settles (a command's start, exit and close when
   * its helper reported them together, a reply and its close) go out as one buffer at the next tick, and
   * a large frame as its joined head and its data. (Not later: at the end of the event loop's turn, a
   * reply beside a bulk transfer would wait for every read callback of that turn.)
   */
  writeParts(parts: readonly Buffer[], written?: () => void): boolean {
    if (this.closed) return false;
    if (!this.socket || this.hostAbsentSince !== undefined) {
      for (const part of parts) {
        this.pending.push(part);
        this.pendingBytes += part.length;
      }
      return this.pendingBytes < HIGH_WATER_MARK;
    }
    let size = 0;
    for (const part of parts) size += part.length;
    if (size <= JOIN_BELOW) {
      this.batch.push(parts.length === 1 ? parts[0] : Buffer.concat(parts, size));
      this.batchBytes += size;
      if (this.batch.length === 1) process.nextTick(this.flushBatch);
      if (this.socket.writableLength + this.batchBytes < HIGH_WATER_MARK) return true;
      this.batchOwesDrain = true;
      return false;
    }
    this.flushBatch();
    // Node calls a write's callback once it is done (or failed): the writes before it are done by then.
    if (parts.length === 1) return this.socket.write(parts[0], written && (() => written()));
    const last = parts[parts.length - 1];
    this.socket.cork();
    this.socket.write(parts.length === 2 ? parts[0] : Buffer.concat(parts.slice(0, -1), size - last.length));
    const ok = this.socket.write(last, written && (() => written()));
    this.socket.uncork();
    return ok;
  }

  write(data: Buffer): boolean {
    return this.writeParts([data]);
  }

  /** The small frames of this run of JavaScript, as one write (or held while there is no host). */
  private readonly flushBatch = (): void => {
    if (!this.batch.length) return;
    const parts = this.batch;
    const joined = parts.length === 1 ? parts[0] : Buffer.concat(parts, this.batchBytes);
    this.batch = [];
    this.batchBytes = 0;
    const owesDrain = this.batchOwesDrain;
    this.batchOwesDrain = false;
    if (this.closed) return;
    const ok = this.socket && this.hostAbsentSince === undefined ? this.writeNow(this.socket, joined) : this.writeParts([joined]);
    // A writer told to wait for the batch hears 'drain' from the socket, or here if the socket did not fill.
    if (owesDrain && ok) this.emit('drain');
  };

  /**
   * A batch goes to the port with one write(2) when nothing is queued before it: a Writable's path costs
   * ~0.5 ms of interpreted JavaScript under TCG, once per command or reply. What the port does not take at
   * once (a full queue, EAGAIN) or an error goes the socket's way, which waits or reports it.
   */
  private writeNow(socket: Socket, data: Buffer): boolean {
    if (socket.writableLength === 0 && this.fd >= 0) {
      try {
        const n = writeSync(this.fd, data);
        if (n === data.length) return true;
        data = data.subarray(n);
      } catch {
        // written below
      }
    }
    return socket.write(data);
  }

  pause(): void {
    this.paused = true;
    this.socket?.pause();
  }

  resume(): void {
    this.paused = false;
    this.socket?.resume();
  }

  close(): void {
    if (this.closed) return;
    this.flushBatch();
    this.markClosed();
    clearTimeout(this.probeTimer);
    this.socket?.destroy();
    this.socket = undefined;
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
