import * as net from 'node:net';

/** Size of a read slab; reads land one after another in it. */
const SLAB_SIZE = 4 * 1024 * 1024;

/** Room a read needs in a slab; a Unix socket read returns at most its peer's send buffer (~208 KiB). */
const SLAB_READ_ROOM = 256 * 1024;

/** Released slabs kept for reuse, per process. */
const MAX_FREE_SLABS = 4;

/**
 * A read buffer whose bytes go out as views and which goes back into use once
 * nothing holds it. Holders count themselves: the reader while it fills the
 * slab, the frame decoder while a frame in it is incomplete, and each message
 * whose reader promised to be done with it before reading the next one. A view
 * handed to anyone who made no such promise pins the slab: it is then never
 * reused, and the garbage collector frees it when the last view goes.
 */
export class Slab {
  private holders = 0;
  private pinned = false;

  constructor(readonly bytes: Buffer, private readonly pool: SlabPool) {}

  hold(): void {
    this.holders++;
  }

  release(): void {
    this.holders--;
    if (this.holders === 0 && !this.pinned) this.pool.recycle(this);
  }

  /** Its bytes may be kept by anyone for as long as they like: never reuse it. */
  pin(): void {
    this.pinned = true;
  }

  /** Let go of it while whoever has its bytes may keep them. */
  releaseKept(): void {
    this.pin();
    this.release();
  }
}

const slabs = new WeakMap<ArrayBufferLike, Slab>();

/** The slab a view lies in, if it came from a pooled reader. */
export function slabOf(view: Uint8Array): Slab | undefined {
  return slabs.get(view.buffer);
}

/**
 * Slabs for the readers of one process. Fresh memory for every 4 MiB read costs
 * a page fault and a zeroed page per 4 KiB and a garbage collection every few
 * dozen slabs: on a local socket, more than copying the bytes out of the kernel.
 */
export class SlabPool {
  private readonly free: Slab[] = [];
  readonly stats = { created: 0, reused: 0 };

  constructor(private readonly slabSize = SLAB_SIZE, private readonly maxFree = MAX_FREE_SLABS) {}

  /** A slab held once, for the caller. */
  take(): Slab {
    let slab = this.free.pop();
    if (slab) {
      this.stats.reused++;
    } else {
      slab = new Slab(Buffer.allocUnsafeSlow(this.slabSize), this);
      slabs.set(slab.bytes.buffer, slab);
      this.stats.created++;
    }
    slab.hold();
    return slab;
  }

  /** Forget the slabs kept for reuse (an idle process gives their memory back). */
  trim(): void {
    this.free.length = 0;
  }

  /** @internal — called by a slab nobody holds any more. */
  recycle(slab: Slab): void {
    if (this.free.length < this.maxFree) this.free.push(slab);
  }
}

/** The pool every reader of this process takes its slabs from. */
export const readSlabs = new SlabPool();

/**
 * Socket reads into consecutive regions of pooled slabs instead of a fresh
 * 64 KiB buffer each: a frame that spans two reads is then one contiguous view,
 * which the frame decoder takes without copying, and a slab whose views are
 * all released is filled again instead of new memory being taken.
 */
export class SlabReader {
  private slab: Slab;
  private used = 0;
  /** Where the bytes go (set by the channel that owns the socket). */
  deliver: (chunk: Buffer) => void = () => undefined;
  /**
   * Optional: after a read, take what else is ready at once into the rest of the region (returns the
   * bytes added). A virtio-serial port hands out 4 KiB per read: gathering a burst here enters
   * JavaScript once per burst instead of once per 4 KiB.
   */
  more?: (into: Buffer) => number;

  constructor(private readonly pool = readSlabs) {
    this.slab = pool.take();
  }

  readonly onread: net.OnReadOpts = {
    buffer: () => {
      if (this.slab.bytes.length - this.used < SLAB_READ_ROOM) {
        const full = this.slab;
        this.slab = this.pool.take();
        this.used = 0;
        full.release();
      }
      return this.slab.bytes.subarray(this.used);
    },
    callback: (bytes: number, buffer: Uint8Array) => {
      if (this.more) bytes += this.more(Buffer.from(buffer.buffer, buffer.byteOffset + bytes, buffer.length - bytes));
      const chunk = Buffer.from(buffer.buffer, buffer.byteOffset, bytes);
      this.used += bytes;
      this.deliver(chunk);
      return true; // keep reading: backpressure is the protocol's credit, not the socket's
    },
  };
}
