import type { Slab } from '@porthole/transport';
import { v1, CHUNK_SIZE, MAX_CHUNK_SIZE } from './messages';
import { PortholeError } from './errors';
import { FRAME_HEADER_SIZE } from './frame';
import { encodeOutputParts } from './chunk-encoding';

/** Room for a chunk message's envelope and fields (stream id, offset, lengths) beside its data. */
const CHUNK_MESSAGE_OVERHEAD = 1024;

/**
 * How much data one message carries to a peer: the largest power of two from CHUNK_SIZE to MAX_CHUNK_SIZE
 * of which two messages fit the peer's window (one is received while the next is on its way) and one fits
 * the peer's frames. Every message and every credit frame costs the guest agent a fixed price (under TCG ~7 ms
 * per message of JavaScript, thread hand-offs and port writes), so larger messages move more per price; a
 * peer that grants a small window (to keep small requests from queueing behind a transfer) gets small ones.
 */
export function chunkSizeFor(peerWindow: number, peerMaxFrameSize: number): number {
  let size = CHUNK_SIZE;
  const fits = (data: number) => 2 * (data + CHUNK_MESSAGE_OVERHEAD) <= peerWindow && data + CHUNK_MESSAGE_OVERHEAD + FRAME_HEADER_SIZE <= peerMaxFrameSize;
  while (size < MAX_CHUNK_SIZE && fits(2 * size)) size *= 2;
  return size;
}

/** What a Stream needs from its session: the session owns the wire, the stream owns the accounting. */
export interface StreamWire {
  /** Encode and queue one envelope; resolves when the channel took it (backpressure). Returns the encoded size. */
  sendEnvelope(envelope: v1.Envelope.$Properties): { size: number; written: Promise<void> };
  /** The envelope a stream message becomes, in parts, and its size (credit is counted in encoded bytes). */
  measure(streamId: number, message: v1.StreamMessage.$Properties): { size: number; parts: Buffer[] };
  /** `written`: see Channel.writeParts. */
  sendEncoded(parts: Buffer[], written?: () => void): Promise<void>;
  forget(streamId: number): void;
}

/**
 * Where a session hands one stream's traffic: a local Stream, or a relay that passes it on to a
 * stream of another session (a broker daemon between its clients and a VM).
 */
export interface StreamEndpoint {
  /** The peer granted this many more bytes. */
  grant(bytes: number): void;
  /** A message of `size` encoded bytes; `payload` is the whole envelope as received, `slab` the read slab it lies in. */
  deliver(message: v1.StreamMessage, size: number, slab: Slab | undefined, payload: Buffer): void;
  /** The peer sends nothing more (half-close). */
  remoteEnd(): void;
  /** The peer reset the stream or the session is gone. */
  fail(error: PortholeError): void;
}

type Reader = { lend: boolean; resolve: (v: v1.StreamMessage | null) => void; reject: (e: unknown) => void };
/** A message from the peer, its encoded size, and the read slab its bytes lie in (held while queued). */
type Inbound = { message: v1.StreamMessage; size: number; slab?: Slab };

/**
 * One request on a session: an ordered, flow-controlled message stream in each
 * direction. The sender spends credit (encoded bytes) the receiver granted; the
 * receiver grants more as its reader consumes messages, so a slow reader slows
 * the sender instead of buffering without bound.
 */
export class Stream implements AsyncIterable<v1.StreamMessage>, StreamEndpoint {
  readonly requestId: string;
  /** Told when the stream is reset or the session is lost (a plain list: an AbortController per stream is costly in an emulated guest). */
  private abortListeners?: Array<(reason: PortholeError) => void>;
  private readonly inbox: Inbound[] = [];
  private readers: Reader[] = [];
  /** The slab of the message readLent() gave out last: released at the next read. */
  private lentSlab?: Slab;
  private creditWaiters: Array<() => void> = [];
  private sendChain: Promise<void> = Promise.resolve();
  private sendCredit: number;
  private readonly peerWindow: number;
  /** Data per message towards the peer (see chunkSizeFor). */
  readonly chunkSize: number;
  private unacknowledged = 0;
  /** Bytes the peer may still send: what we granted (the window, then each Credit) less what arrived. */
  private receiveCredit: number;
  private localEnded = false;
  private remoteEnded = false;
  private failure?: PortholeError;
  private settle!: { resolve: () => void; reject: (e: unknown) => void };
  readonly closed: Promise<void>;

  constructor(
    readonly id: number,
    readonly open: v1.Open,
    private readonly wire: StreamWire,
    /** Credit the peer gave us for this stream. */
    peerWindow: number,
    /** Credit we give the peer; re-granted in halves as messages are read (each grant is a frame: on a slow port a costly write). */
    private readonly localWindow: number,
    /** The largest frame the peer reads. */
    peerMaxFrameSize: number,
  ) {
    this.requestId = open.requestId;
    this.sendCredit = peerWindow;
    this.peerWindow = peerWindow;
    this.chunkSize = chunkSizeFor(peerWindow, peerMaxFrameSize);
    this.receiveCredit = localWindow;
    this.closed = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    // A closed promise nobody awaits must not crash the process on reset.
    this.closed.catch(() => undefined);
  }

  /**
   * Calls `listener` once when the stream is reset or the session is lost — at
   * once if that already happened; never once the stream finished normally.
   * Returns the function that removes it.
   */
  onAbort(listener: (reason: PortholeError) => void): () => void {
    if (this.failure) {
      listener(this.failure);
      return () => undefined;
    }
    (this.abortListeners ??= []).push(listener);
    return () => {
      const at = this.abortListeners?.indexOf(listener) ?? -1;
      if (at >= 0) this.abortListeners!.splice(at, 1);
    };
  }

  get isOpen(): boolean {
    return !this.failure && !(this.localEnded && this.remoteEnded);
  }

  /**
   * Send one message, waiting for credit first. Messages leave in call order. `written`, if given, is
   * called once the channel holds none of the message's bytes any more, so that buffers it referred to
   * may be filled again; never, if the channel cannot tell or the message was not sent.
   */
  send(message: v1.StreamMessage.$Properties, written?: () => void): Promise<void> {
    return this.enqueue(() => this.wire.measure(this.id, message), written);
  }

  /**
   * Send a command's output given in pieces as one ExecOutput message, without joining them (as send()
   * otherwise). Together the pieces must fit a message (chunkSize).
   */
  sendOutput(fd: v1.OutputStream, data: readonly Buffer[]): Promise<void> {
    return this.enqueue(() => {
      const parts = encodeOutputParts(this.id, fd, data);
      return { size: parts.reduce((n, p) => n + p.length, 0), parts };
    });
  }

  private enqueue(encode: () => { size: number; parts: Buffer[] }, written?: () => void): Promise<void> {
    const next = this.sendChain.then(() => this.sendNow(encode, written));
    this.sendChain = next.catch(() => undefined);
    return next;
  }

  private async sendNow(encode: () => { size: number; parts: Buffer[] }, written?: () => void): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.localEnded) throw new PortholeError(v1.ErrorCode.ERROR_CODE_PROTOCOL, `stream ${this.id}: send after end`);
    const { size, parts } = encode();
    if (size > this.peerWindow) {
      // Waiting would never end: the peer never grants more than its whole window at once.
      throw new PortholeError(v1.ErrorCode.ERROR_CODE_INVALID_ARGUMENT,
        `stream ${this.id}: a message of ${size} bytes is larger than the peer's window of ${this.peerWindow} bytes (send data in pieces of at most chunkSize, ${this.chunkSize})`);
    }
    while (this.sendCredit < size && !this.failure) {
      await new Promise<void>((r) => this.creditWaiters.push(r));
    }
    if (this.failure) throw this.failure;
    this.sendCredit -= size;
    await this.wire.sendEncoded(parts, written);
    if (this.failure) throw this.failure;
  }

  /** Half-close: this side sends nothing more (queued sends go first). */
  end(): void {
    if (this.localEnded || this.failure) return;
    this.localEnded = true;
    this.sendChain = this.sendChain.then(() => {
      if (this.failure) return;
      void this.wire.sendEnvelope({ streamId: this.id, close: {} }).written.catch(() => undefined);
      this.maybeFinished();
    });
  }

  /** Abort the stream; the peer sees the error as the reason. */
  reset(error: unknown): void {
    if (this.failure || (this.localEnded && this.remoteEnded)) return;
    const err = PortholeError.from(error);
    void this.wire.sendEnvelope({ streamId: this.id, reset: { error: err.toProto() } }).written.catch(() => undefined);
    this.fail(err);
  }

  /** Next message from the peer; null once the peer ended. Its bytes stay valid for as long as anything refers to them. */
  read(): Promise<v1.StreamMessage | null> {
    return this.next(false);
  }

  /**
   * Next message from the peer, whose bytes are lent until this stream's next
   * read: their memory may then be filled with later input. For a reader that
   * is done with each message before asking for the next (writes it to a file,
   * hashes it, drops it): the session's read buffers are then reused instead of
   * fresh memory being taken for every 4 MiB. Copy anything kept longer.
   */
  readLent(): Promise<v1.StreamMessage | null> {
    return this.next(true);
  }

  /** The messages as readLent() gives them, for `for await`. */
  lent(): AsyncGenerator<v1.StreamMessage> {
    return this.messages(true);
  }

  [Symbol.asyncIterator](): AsyncIterator<v1.StreamMessage> {
    return this.messages(false);
  }

  private async *messages(lend: boolean): AsyncGenerator<v1.StreamMessage> {
    for (;;) {
      const message = await this.next(lend);
      if (message === null) return;
      yield message;
    }
  }

  private next(lend: boolean): Promise<v1.StreamMessage | null> {
    // Asking for the next message is the promise that the last lent one is no longer used.
    this.lentSlab?.release();
    this.lentSlab = undefined;
    const queued = this.inbox.shift();
    if (queued) {
      this.consumed(queued.size);
      this.handOut(queued.slab, lend);
      return Promise.resolve(queued.message);
    }
    if (this.failure) return Promise.reject(this.failure);
    if (this.remoteEnded) return Promise.resolve(null);
    return new Promise((resolve, reject) => this.readers.push({ lend, resolve, reject }));
  }

  /** A message goes to its reader: a lent one keeps its slab held until the next read, any other pins it. */
  private handOut(slab: Slab | undefined, lend: boolean): void {
    if (!slab) return;
    if (lend) {
      // Two lent messages out at once (reads that overlapped): the older one cannot be tracked any more.
      this.lentSlab?.releaseKept();
      this.lentSlab = slab;
      return;
    }
    slab.releaseKept();
  }

  // ---- called by the session

  /** @internal */
  deliver(message: v1.StreamMessage, size: number, slab?: Slab): void {
    if (this.failure || this.remoteEnded) return;
    if (size > this.receiveCredit) {
      // A peer that ignores flow control is cut off, never buffered: what it sends next is dropped unread.
      this.reset(new PortholeError(v1.ErrorCode.ERROR_CODE_PROTOCOL,
        `stream ${this.id}: the peer sent ${size - this.receiveCredit} bytes past the ${this.receiveCredit} bytes of credit granted (a sender must wait for Credit)`));
      return;
    }
    this.receiveCredit -= size;
    slab?.hold();
    const reader = this.readers.shift();
    if (reader) {
      this.consumed(size);
      this.handOut(slab, reader.lend);
      reader.resolve(message);
    } else {
      this.inbox.push({ message, size, slab });
    }
  }

  /** @internal */
  grant(bytes: number): void {
    this.sendCredit += bytes;
    const waiters = this.creditWaiters;
    this.creditWaiters = [];
    for (const w of waiters) w();
  }

  /** @internal */
  remoteEnd(): void {
    if (this.remoteEnded) return;
    this.remoteEnded = true;
    for (const r of this.readers.splice(0)) r.resolve(null);
    this.maybeFinished();
  }

  /** @internal — the peer reset the stream or the session is gone. */
  fail(error: PortholeError): void {
    if (this.failure) return;
    this.failure = error;
    // Queued messages were never given out; a lent one may still be in use (a write in flight): pinned.
    for (const queued of this.inbox.splice(0)) queued.slab?.release();
    this.lentSlab?.releaseKept();
    this.lentSlab = undefined;
    for (const r of this.readers.splice(0)) r.reject(error);
    this.grant(0);
    const listeners = this.abortListeners ?? [];
    this.abortListeners = undefined;
    for (const l of listeners) l(error);
    this.wire.forget(this.id);
    this.settle.reject(error);
  }

  private consumed(size: number): void {
    this.unacknowledged += size;
    if (this.unacknowledged >= this.localWindow / 2 && !this.remoteEnded && !this.failure) {
      const bytes = this.unacknowledged;
      this.unacknowledged = 0;
      this.receiveCredit += bytes;
      void this.wire.sendEnvelope({ streamId: this.id, credit: { bytes } }).written.catch(() => undefined);
    }
  }

  private maybeFinished(): void {
    if (this.localEnded && this.remoteEnded && !this.failure) {
      this.wire.forget(this.id);
      this.abortListeners = undefined;
      this.settle.resolve();
    }
  }
}
