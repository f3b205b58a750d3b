import { slabOf, type Slab } from '@porthole/transport';
import { crc32c } from './crc32c';

/**
 * Frame layout (16-byte header, big-endian), then the payload (one protobuf Envelope):
 *
 *   0  magic      B7 50 48 4C
 *   4  version    1
 *   5  flags      FRAME_FLAG_NO_PAYLOAD_CRC or 0 (other bits reserved, rejected)
 *   6  length     u32, payload bytes
 *  10  crc        u32, CRC32C of the payload; 0 under FRAME_FLAG_NO_PAYLOAD_CRC
 *  14  hcheck     u16, low 16 bits of CRC32C of header bytes 0..13
 *
 * The header check lets a reader reject a corrupt length at once instead of
 * waiting for a payload that will never come.
 */
export const FRAME_MAGIC = Buffer.from([0xb7, 0x50, 0x48, 0x4c]);
export const FRAME_VERSION = 1;
export const FRAME_HEADER_SIZE = 16;
/** Default largest payload a reader accepts. */
export const DEFAULT_MAX_FRAME_SIZE = 1024 * 1024 + 4096;

/**
 * The frame carries no payload CRC32C: sent only to a peer that said in its hello that it takes such
 * frames, over a channel that cannot corrupt bytes (the header check still guards the length). The
 * flag is in the frame, so a decoder needs no state to know which frames to check.
 */
export const FRAME_FLAG_NO_PAYLOAD_CRC = 0x01;

/**
 * The 16-byte header for a payload given in parts (their concatenation is the payload); `payloadCrc`
 * false leaves the payload unchecked (FRAME_FLAG_NO_PAYLOAD_CRC).
 */
export function frameHeader(parts: readonly Uint8Array[], payloadCrc = true): Buffer {
  let length = 0;
  let crc = 0;
  for (const part of parts) {
    length += part.length;
    if (payloadCrc) crc = crc32c(part, crc);
  }
  const header = Buffer.allocUnsafe(FRAME_HEADER_SIZE);
  FRAME_MAGIC.copy(header, 0);
  header[4] = FRAME_VERSION;
  header[5] = payloadCrc ? 0 : FRAME_FLAG_NO_PAYLOAD_CRC;
  header.writeUInt32BE(length, 6);
  header.writeUInt32BE(crc, 10);
  header.writeUInt16BE(crc32c(header.subarray(0, 14)) & 0xffff, 14);
  return header;
}

export function encodeFrame(payload: Uint8Array): Buffer {
  return Buffer.concat([frameHeader([payload]), payload]);
}

/** Payloads smaller than this are copied out of the read buffer they arrived in. */
const COPY_BELOW = 64 * 1024;

/**
 * Default for FrameDecoderOptions.frameTimeoutMs. A peer's frame arrives in one write: its bytes stop
 * coming for seconds only when the peer went away in the middle of it (or a new one took over a serial
 * line without a sign), and then the bytes that follow belong to someone else.
 */
export const DEFAULT_FRAME_TIMEOUT_MS = 5000;

export interface FrameDecoderStats {
  frames: number;
  /** Bytes dropped while looking for the next valid frame. */
  skippedBytes: number;
  /** Headers or payloads that failed a check. */
  badFrames: number;
}

export interface FrameDecoderOptions {
  maxFrameSize?: number;
  /** Told once per resynchronisation, with why (never throws out of push()). */
  onGarbage?: (reason: string) => void;
  /**
   * An incomplete frame is dropped when no byte came for this long (default DEFAULT_FRAME_TIMEOUT_MS,
   * 0 = never), and the bytes after its magic are scanned again: a frame cut by a peer that went away
   * must not swallow the next peer's hello.
   */
  frameTimeoutMs?: number;
  /**
   * Frames without a payload CRC (FRAME_FLAG_NO_PAYLOAD_CRC) are refused: set on a channel that can
   * corrupt bytes, where this side never offers to take them.
   */
  requirePayloadCrc?: boolean;
}

/**
 * Turns a byte stream into frame payloads. Garbage, a bad checksum, a corrupt
 * header or a cut frame make it scan to the next magic and go on; an oversize
 * length is rejected from the header alone, before any allocation; a frame
 * whose bytes stop coming is dropped after frameTimeoutMs.
 */
export class FrameDecoder {
  readonly stats: FrameDecoderStats = { frames: 0, skippedBytes: 0, badFrames: 0 };
  private chunks: Buffer[] = [];
  private length = 0;
  /**
   * The checked header of the frame being gathered: a frame arrives in many reads
   * (4 KiB each from a virtio-serial port under TCG), and its header is checked once.
   */
  private pending?: { total: number; crc?: number };
  /** The read slabs the buffered bytes lie in: held, so that they are not filled again under us. */
  private held: Slab[] = [];
  private readonly maxFrameSize: number;
  private readonly frameTimeoutMs: number;
  /** When the last bytes came (only read while something is buffered). */
  private lastInput = 0;
  private timer?: NodeJS.Timeout;

  constructor(private readonly onFrame: (payload: Buffer) => void, private readonly options: FrameDecoderOptions = {}) {
    this.maxFrameSize = options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE;
    this.frameTimeoutMs = options.frameTimeoutMs ?? DEFAULT_FRAME_TIMEOUT_MS;
  }

  /** Bytes held while waiting for the rest of a frame. */
  get buffered(): number {
    return this.length;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    const last = this.chunks[this.chunks.length - 1];
    if (last && last.buffer === chunk.buffer && last.byteOffset + last.length === chunk.byteOffset) {
      // Consecutive reads into one slab (see SocketChannel): one view, so a frame spanning them needs no copy.
      this.chunks[this.chunks.length - 1] = Buffer.from(chunk.buffer, last.byteOffset, last.length + chunk.length);
    } else {
      this.chunks.push(chunk);
    }
    this.length += chunk.length;
    this.drain();
    this.holdBuffered();
    this.watchIncomplete();
  }

  /** Forget partial input (the stream was interrupted, or is over). */
  reset(): void {
    if (this.length) this.stats.skippedBytes += this.length;
    this.chunks = [];
    this.length = 0;
    this.pending = undefined;
    this.holdBuffered();
    this.watchIncomplete();
  }

  /** One timer while bytes are held, re-armed from the last input rather than restarted on every read. */
  private watchIncomplete(): void {
    if (this.length === 0 || this.frameTimeoutMs <= 0) {
      clearTimeout(this.timer);
      this.timer = undefined;
      return;
    }
    this.lastInput = Date.now();
    if (!this.timer) this.arm(this.frameTimeoutMs);
  }

  private arm(ms: number): void {
    // Decided after the event loop's next poll for input: a process that was frozen (a paused VM) runs
    // its timers before it reads the bytes that came meanwhile, and those must count.
    const timer = setTimeout(() => setImmediate(() => this.expire(timer)), ms).unref();
    this.timer = timer;
  }

  private expire(timer: NodeJS.Timeout): void {
    if (this.timer !== timer) return; // reset meanwhile
    this.timer = undefined;
    if (this.length === 0) return;
    const quiet = Date.now() - this.lastInput;
    if (quiet < this.frameTimeoutMs) this.arm(this.frameTimeoutMs - quiet);
    else this.dropIncomplete();
  }

  /** The frame being gathered will not be completed: drop its magic, scan what came after it. */
  private dropIncomplete(): void {
    this.stats.badFrames++;
    this.options.onGarbage?.(`a frame cut short: no byte of it for ${this.frameTimeoutMs} ms`);
    this.pending = undefined;
    const skip = Math.min(FRAME_MAGIC.length, this.length);
    this.take(skip);
    this.stats.skippedBytes += skip;
    this.drain();
    this.holdBuffered();
    if (this.length) this.watchIncomplete();
  }

  /** Hold the slabs of the bytes still buffered (one or two), let go of the rest. */
  private holdBuffered(): void {
    if (this.held.length === 0 && this.chunks.length === 0) return;
    const now: Slab[] = [];
    for (const c of this.chunks) {
      const slab = slabOf(c);
      if (slab && !now.includes(slab)) now.push(slab);
    }
    for (const slab of now) if (!this.held.includes(slab)) slab.hold();
    for (const slab of this.held) if (!now.includes(slab)) slab.release();
    this.held = now;
  }

  private drain(): void {
    while (this.length >= FRAME_HEADER_SIZE) {
      if (!this.pending) {
        const head = this.peek(FRAME_HEADER_SIZE);
        const problem = this.checkHeader(head);
        if (problem) {
          this.stats.badFrames++;
          this.resync(problem);
          continue;
        }
        const unchecked = (head[5] & FRAME_FLAG_NO_PAYLOAD_CRC) !== 0;
        this.pending = { total: FRAME_HEADER_SIZE + head.readUInt32BE(6), crc: unchecked ? undefined : head.readUInt32BE(10) };
      }
      const { total, crc: expected } = this.pending;
      if (this.length < total) return;
      this.pending = undefined;
      const frame = this.take(total);
      const payload = frame.subarray(FRAME_HEADER_SIZE);
      if (expected !== undefined && crc32c(payload) !== expected) {
        this.stats.badFrames++;
        // The "frame" may have been garbage that looked like a header: its bytes may hold real frames.
        this.chunks.unshift(frame.subarray(1));
        this.length += frame.length - 1;
        this.stats.skippedBytes += 1;
        this.resync('payload checksum mismatch');
        continue;
      }
      this.stats.frames++;
      // A small payload is copied out so that what keeps it (a queued message) does not keep a whole read buffer.
      this.onFrame(payload.length < COPY_BELOW && payload.length < payload.buffer.byteLength ? Buffer.copyBytesFrom(payload) : payload);
    }
  }

  private checkHeader(head: Buffer): string | undefined {
    if (head.compare(FRAME_MAGIC, 0, 4, 0, 4) !== 0) return 'bytes before a frame';
    if ((crc32c(head.subarray(0, 14)) & 0xffff) !== head.readUInt16BE(14)) return 'header checksum mismatch';
    if (head[4] !== FRAME_VERSION) return `unsupported frame version ${head[4]}`;
    if (head[5] & ~FRAME_FLAG_NO_PAYLOAD_CRC) return `unknown frame flags ${head[5]}`;
    if (head[5] && this.options.requirePayloadCrc) return 'a frame without a payload checksum on a channel that can corrupt bytes';
    const length = head.readUInt32BE(6);
    if (length > this.maxFrameSize) return `frame length ${length} over the maximum ${this.maxFrameSize}`;
    return undefined;
  }

  /** Drop bytes up to the next possible magic (not at offset 0). */
  private resync(reason: string): void {
    this.options.onGarbage?.(reason);
    const all = this.take(this.length);
    const at = all.indexOf(FRAME_MAGIC, 1);
    // Without a full magic, keep a tail that may be the start of one.
    const keepFrom = at >= 0 ? at : Math.max(1, all.length - (FRAME_MAGIC.length - 1));
    this.stats.skippedBytes += keepFrom;
    const rest = all.subarray(keepFrom);
    if (rest.length) {
      this.chunks.push(rest);
      this.length = rest.length;
    }
  }

  /** The first n bytes as one buffer (merging leading chunks only when a header spans them). */
  private peek(n: number): Buffer {
    if (this.chunks[0].length < n) {
      let count = 0;
      let size = 0;
      while (size < n) size += this.chunks[count++].length;
      this.chunks.splice(0, count, Buffer.concat(this.chunks.slice(0, count), size));
    }
    return this.chunks[0];
  }

  private take(n: number): Buffer {
    const first = this.chunks[0];
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.chunks[0];
        const use = Math.min(c.length, n - off);
        c.copy(out, off, 0, use);
        off += use;
        if (use === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(use);
      }
    }
    this.length -= n;
    return out;
  }
}
