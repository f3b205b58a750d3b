// Where a ticket's bytes live: a file in the storage directory (or its staging file), or an NBD export (qemu-nbd
// serving the guest-visible view of a qcow2). The data API talks to both through this one interface.
import { execFile } from 'node:child_process';
import { constants as fsc } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { ImageError } from './errors';
import { ALLOCATION_DEPTH, BASE_ALLOCATION, BlockStatusExtent, NbdAddress, NbdClient, STATE_DIRTY, STATE_ZERO } from './nbd';

const run = promisify(execFile);
const MiB = 1024 * 1024;

/** imageio's zero extent: `zero` reads as zeros; `hole` is unallocated in a qcow2 chain (never for raw files). */
export interface Extent {
  start: number;
  length: number;
  zero: boolean;
  hole: boolean;
}

/** imageio's dirty extent (incremental backup): `dirty` changed since the bitmap was started. */
export interface DirtyExtent {
  start: number;
  length: number;
  dirty: boolean;
  zero: boolean;
}

export interface Backend {
  readonly kind: 'file' | 'nbd';
  /** Bytes the backend holds now (a file may be shorter than its ticket's size until written). */
  size(): Promise<number>;
  /** A stream of [start, end); `signal` stops it. */
  read(start: number, end: number, signal: AbortSignal): Promise<Readable>;
  /**
   * Writes `body` at `start` and resolves with the bytes that landed; a cut or aborted body rejects with a WriteCut
   * telling how many landed. `onData` sees each chunk as it arrives (the body starts flowing only here).
   */
  write(start: number, body: Readable, signal: AbortSignal, onData: (n: number) => void): Promise<number>;
  /** Makes [start, end) read as zeros; `punch` may deallocate (the ticket's `sparse`). */
  zero(start: number, end: number, punch: boolean): Promise<void>;
  flush(): Promise<void>;
  extents(context: 'zero' | 'dirty'): Promise<Extent[] | DirtyExtent[]>;
  /** Whether `extents('dirty')` can answer. */
  readonly canDirty: boolean;
  /** Connections that may write concurrently (imageio's max_writers). */
  readonly maxWriters: number;
  close(): Promise<void>;
}

/** A write cut before its end: how many bytes landed (a resume continues there). */
export class WriteCut extends Error {
  constructor(readonly landed: number, reason: Error) {
    super(reason.message);
  }
}

/** A regular file; `path` changes when a staged upload is published. */
export class FileBackend implements Backend {
  readonly kind = 'file';
  readonly canDirty = false;
  constructor(public path: string, readonly maxWriters: number) {}

  async size(): Promise<number> {
    return (await stat(this.path)).size;
  }

  async read(start: number, end: number, signal: AbortSignal): Promise<Readable> {
    const fh = await open(this.path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    const stream = fh.createReadStream({ start, end: end - 1, highWaterMark: MiB });
    signal.addEventListener('abort', () => stream.destroy(new Error('transfer canceled')), { once: true });
    return stream;
  }

  async write(start: number, body: Readable, signal: AbortSignal, onData: (n: number) => void): Promise<number> {
    const fh = await open(this.path, fsc.O_WRONLY | fsc.O_NOFOLLOW);
    const ws = fh.createWriteStream({ start, highWaterMark: MiB });
    let cut: Error | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        // A cut or canceled request still lands what it delivered (a resume starts there): end the file stream, which
        // writes what it holds, instead of destroying it.
        const stop = (err: Error) => {
          if (cut) return;
          cut = err;
          body.unpipe(ws);
          ws.end();
        };
        if (signal.aborted) stop(new Error('transfer canceled'));
        signal.addEventListener('abort', () => stop(new Error('transfer canceled')), { once: true });
        body.once('error', stop);
        body.once('close', () => { if (!body.readableEnded) stop(new Error('the request was cut before its end')); });
        ws.once('error', (err) => { body.unpipe(ws); reject(err); });
        ws.once('finish', () => (cut ? reject(cut) : resolve()));
        if (!cut) {
          body.on('data', (c: Buffer) => onData(c.length));
          body.pipe(ws);
        }
      });
    } catch (err) {
      throw new WriteCut(ws.bytesWritten, err as Error);
    } finally {
      ws.destroy();
    }
    return ws.bytesWritten;
  }

  async zero(start: number, end: number, punch: boolean): Promise<void> {
    if (end <= start) return;
    const fh = await open(this.path, fsc.O_WRONLY | fsc.O_NOFOLLOW);
    try {
      // Zeroing past the end of a file that is shorter than its ticket grows it, like a write there would.
      if ((await fh.stat()).size < end) await fh.truncate(end);
      try {
        await run('fallocate', [punch ? '--punch-hole' : '--zero-range', '--keep-size', '--offset', String(start), '--length', String(end - start), this.path]);
      } catch {
        const zeros = Buffer.alloc(Math.min(MiB, end - start));
        for (let pos = start; pos < end; pos += zeros.length) await fh.write(zeros, 0, Math.min(zeros.length, end - pos), pos);
      }
    } finally {
      await fh.close();
    }
  }

  async flush(): Promise<void> {
    const fh = await open(this.path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  /** Data and zero extents of the file's bytes (`qemu-img map -f raw`: SEEK_DATA/SEEK_HOLE); raw files have no holes. */
  async extents(context: 'zero' | 'dirty'): Promise<Extent[]> {
    if (context === 'dirty') throw new ImageError(404, 'dirty extents are not available for a file (only for an NBD export with a dirty bitmap)');
    const { stdout } = await run('qemu-img', ['map', '-f', 'raw', '--output=json', this.path], { maxBuffer: 64 * MiB });
    const raw = JSON.parse(stdout) as Array<{ start: number; length: number; zero: boolean }>;
    return mergeExtents(raw.map((e) => ({ start: e.start, length: e.length, zero: e.zero, hole: false })));
  }

  async close(): Promise<void> {}
}

/** Joins neighbours with the same flags. */
function mergeExtents<T extends { start: number; length: number }>(list: T[], same = (a: T, b: T) => JSON.stringify({ ...a, start: 0, length: 0 }) === JSON.stringify({ ...b, start: 0, length: 0 })): T[] {
  const out: T[] = [];
  for (const e of list) {
    const last = out[out.length - 1];
    if (last && last.start + last.length === e.start && same(last, e)) last.length += e.length;
    else out.push({ ...e });
  }
  return out;
}

/** Cuts two extent lists of the same span at every boundary of either, pairing their flags. */
function overlay(a: BlockStatusExtent[], b: BlockStatusExtent[]): Array<{ length: number; a: number; b: number }> {
  const out: Array<{ length: number; a: number; b: number }> = [];
  let i = 0;
  let j = 0;
  let ra = a[0]?.length ?? 0;
  let rb = b[0]?.length ?? 0;
  while (i < a.length && j < b.length) {
    const n = Math.min(ra, rb);
    out.push({ length: n, a: a[i].flags, b: b[j].flags });
    ra -= n;
    rb -= n;
    if (ra === 0 && ++i < a.length) ra = a[i].length;
    if (rb === 0 && ++j < b.length) rb = b[j].length;
  }
  return out;
}

/**
 * An NBD export. One connection per ticket carries every HTTP request (NBD allows many requests in flight), so a
 * qemu-nbd started with the default `--shared=1` works; the connection opens on first use and reopens after a failure.
 */
export class NbdBackend implements Backend {
  readonly kind = 'nbd';
  private client?: Promise<NbdClient>;

  constructor(private readonly address: NbdAddress, private readonly exportName: string, private readonly dirty: boolean, readonly maxWriters: number) {}

  get canDirty(): boolean {
    return this.dirty;
  }

  private async nbd(): Promise<NbdClient> {
    if (!this.client) {
      this.client = NbdClient.connect(this.address, this.exportName, { dirty: this.dirty });
      this.client.catch(() => (this.client = undefined));
    }
    const c = await this.client;
    return c;
  }

  /** Runs an NBD call, mapping its failure to an HTTP answer (no socket path in it) and dropping a broken connection. */
  private async call<T>(fn: (c: NbdClient) => Promise<T>): Promise<T> {
    const c = await this.nbd().catch((err: Error) => {
      throw new ImageError(502, `NBD export unavailable: ${err.message}`);
    });
    try {
      return await fn(c);
    } catch (err) {
      const e = err as Error & { code?: string };
      if (e instanceof ImageError) throw e;
      if (e.code === 'EPROTO' || e.code === 'ESHUTDOWN') this.client = undefined;
      if (e.code === 'EPERM' && c.readOnly) throw new ImageError(403, 'the NBD export is read-only');
      throw new ImageError(e.code === 'EINVAL' ? 400 : 500, `NBD: ${e.message}`);
    }
  }

  async size(): Promise<number> {
    return this.call(async (c) => c.size);
  }

  async read(start: number, end: number, signal: AbortSignal): Promise<Readable> {
    const c = await this.call(async (x) => x);
    const step = 4 * MiB;
    const call = this.call.bind(this);
    // One read ahead keeps the export busy while the previous piece goes out.
    async function* pieces(): AsyncGenerator<Buffer> {
      let next: Promise<Buffer> | undefined = start < end ? call(() => c.read(start, Math.min(step, end - start))) : undefined;
      for (let pos = start; pos < end; pos += step) {
        if (signal.aborted) throw new Error('transfer canceled');
        const cur = next as Promise<Buffer>;
        const after = pos + step;
        next = after < end ? call(() => c.read(after, Math.min(step, end - after))) : undefined;
        next?.catch(() => undefined);
        yield await cur;
      }
    }
    return Readable.from(pieces(), { objectMode: false, highWaterMark: 2 * step });
  }

  async write(start: number, body: Readable, signal: AbortSignal, onData: (n: number) => void): Promise<number> {
    const c = await this.call(async (x) => x);
    const step = 4 * MiB;
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let queued = 0;
    let landed = 0;
    const inflight = new Set<Promise<void>>();
    let failure: Error | undefined;
    // Pieces complete in any order; what landed is the prefix without a gap.
    const acked: Array<[number, number]> = [];
    const ack = (s: number, e: number) => {
      acked.push([s, e]);
      acked.sort((x, y) => x[0] - y[0]);
      while (acked.length && acked[0][0] === landed) landed = acked.shift()![1];
    };
    const sendPending = () => {
      if (!pendingBytes) return;
      const data = pending.length === 1 ? pending[0] : Buffer.concat(pending, pendingBytes);
      const at = queued;
      queued += data.length;
      pending = [];
      pendingBytes = 0;
      const p = this.call(() => c.write(start + at, data)).then(() => ack(at, at + data.length), (err: Error) => { failure ??= err; });
      inflight.add(p);
      void p.finally(() => inflight.delete(p));
    };
    try {
      const onAbort = () => body.destroy(new Error('transfer canceled'));
      signal.addEventListener('abort', onAbort, { once: true });
      try {
        for await (const chunk of body as AsyncIterable<Buffer>) {
          onData(chunk.length);
          pending.push(chunk);
          pendingBytes += chunk.length;
          if (pendingBytes >= step) sendPending();
          while (inflight.size >= 2) await Promise.race(inflight);
          if (failure) throw failure;
        }
        if (!body.readableEnded) throw new Error('the request was cut before its end');
      } finally {
        signal.removeEventListener('abort', onAbort);
      }
      sendPending();
      await Promise.all(inflight);
      if (failure) throw failure;
      return landed;
    } catch (err) {
      // What arrived still lands: send it, then report how far the image is written without a gap.
      if (!failure) sendPending();
      await Promise.all(inflight);
      const cause = signal.aborted ? new Error('transfer canceled') : (err as Error);
      throw failure instanceof ImageError ? failure : new WriteCut(landed, cause);
    }
  }

  async zero(start: number, end: number, punch: boolean): Promise<void> {
    if (end > start) await this.call((c) => c.zero(start, end - start, punch));
  }

  async flush(): Promise<void> {
    await this.call((c) => c.flush());
  }

  async extents(context: 'zero' | 'dirty'): Promise<Extent[] | DirtyExtent[]> {
    return this.call(async (c) => {
      if (context === 'dirty' && !c.dirtyBitmap) throw new ImageError(404, 'the NBD export has no dirty bitmap (qemu-nbd --bitmap)');
      // Without base:allocation, the whole export is one data extent (as imageio reports it).
      if (!c.hasContext(BASE_ALLOCATION)) {
        return context === 'zero' ? [{ start: 0, length: c.size, zero: false, hole: false }] : [{ start: 0, length: c.size, dirty: true, zero: false }];
      }
      const second = context === 'dirty' ? c.dirtyBitmap : c.hasContext(ALLOCATION_DEPTH) ? ALLOCATION_DEPTH : undefined;
      const zero: Extent[] = [];
      const dirty: DirtyExtent[] = [];
      for (let offset = 0; offset < c.size;) {
        const status = await c.blockStatus(offset, Math.min(c.size - offset, 1024 * MiB));
        const base = status.get(BASE_ALLOCATION) ?? [];
        const other = second ? status.get(second) ?? [] : base.map((e) => ({ length: e.length, flags: 0 }));
        const pieces = overlay(base, other);
        if (!pieces.length) throw new ImageError(502, 'NBD: empty block status reply');
        for (const p of pieces) {
          const length = Math.min(p.length, c.size - offset);
          const isZero = (p.a & STATE_ZERO) !== 0;
          if (context === 'dirty') dirty.push({ start: offset, length, dirty: (p.b & STATE_DIRTY) !== 0, zero: isZero });
          // qemu:allocation-depth 0: allocated in no layer of the chain, i.e. a hole that exposes a backing file.
          else zero.push({ start: offset, length, zero: isZero, hole: second === ALLOCATION_DEPTH && p.b === 0 });
          offset += length;
          if (offset >= c.size) break;
        }
      }
      return context === 'dirty' ? mergeExtents(dirty) : mergeExtents(zero);
    });
  }

  async close(): Promise<void> {
    const c = this.client;
    this.client = undefined;
    if (c) await c.then((x) => x.close(), () => undefined);
  }
}
