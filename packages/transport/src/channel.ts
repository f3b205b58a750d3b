import { EventEmitter } from 'node:events';

/**
 * Events every channel emits. A channel carries opaque buffers and never
 * looks inside them.
 */
export interface ChannelEvents {
  /**
   * Bytes (byte channel) or one whole packet (packet channel). A byte channel's chunk may be a view
   * of a pooled read slab, refilled once nothing holds it: use it during the event, copy it, or hold
   * its slab (see slabOf).
   */
  data: [chunk: Buffer];
  /** Emitted after write() returned false, when writing may go on. */
  drain: [];
  /** The channel is gone for good; a new one must be opened. */
  close: [error?: Error];
  /**
   * Optional: the byte stream was interrupted (the peer went away and may come
   * back on the same channel, as a virtio-serial port does). Bytes on either
   * side of it do not belong together; a frame decoder drops partial input.
   */
  discontinuity: [];
}

/**
 * One open connection to the peer.
 *
 * - A `bytes` channel is a byte stream (socket, virtio-serial port, serial
 *   tty): writes may be split or merged on the way, so the protocol frames them.
 * - A `packets` channel keeps message boundaries (xenstore): each write()
 *   arrives as exactly one 'data' event on the other side.
 */
export interface Channel {
  readonly kind: 'bytes' | 'packets';
  /** Human description for logs and errors, e.g. "unix:/run/vm1.sock". */
  readonly description: string;
  /** Largest packet a `packets` channel carries; Infinity for byte channels. */
  readonly maxPacketSize: number;
  /**
   * The channel cannot change, drop or insert bytes (a kernel or hypervisor buffer: socket,
   * virtio-serial port), unlike a serial line. The protocol may then leave out its per-frame payload
   * checksum; its header check and the end-to-end hashes stay.
   */
  readonly reliable: boolean;
  /** Queue data; false means "wait for 'drain' before writing more". */
  write(data: Buffer): boolean;
  /**
   * Optional: queue several buffers as one write without concatenating them (byte channels).
   * `written`, if given, is called once the channel holds none of them any more (they reached the
   * kernel, or were dropped with the channel): the caller may then fill them again. A channel that
   * cannot tell (a small frame it batched, a write held while no peer is there) never calls it.
   */
  writeParts?(parts: readonly Buffer[], written?: () => void): boolean;
  /**
   * Optional: stop delivering 'data' until resume() (the peer is then held back by the channel's own
   * flow control: a socket's or port's kernel buffer, a window of keys). The session pauses a peer
   * that does not read what it is sent.
   */
  pause?(): void;
  resume?(): void;
  /** Close and release; emits 'close' once. */
  close(): void;
  readonly closed: boolean;

  on<E extends keyof ChannelEvents>(event: E, listener: (...args: ChannelEvents[E]) => void): this;
  once<E extends keyof ChannelEvents>(event: E, listener: (...args: ChannelEvents[E]) => void): this;
  off<E extends keyof ChannelEvents>(event: E, listener: (...args: ChannelEvents[E]) => void): this;
}

/** Something that opens channels to one peer (and can open a new one after a loss). */
export interface Connector {
  readonly description: string;
  /**
   * Open a channel; rejects with an error naming the cause (no such socket, ...). An error with
   * `permanent: true` says that trying again cannot help (the VM does not exist): connectWithRetry stops.
   */
  connect(signal?: AbortSignal): Promise<Channel>;
}

/** Typed EventEmitter base the concrete channels extend. */
export abstract class ChannelBase extends EventEmitter implements Channel {
  abstract readonly kind: 'bytes' | 'packets';
  abstract readonly description: string;
  readonly maxPacketSize: number = Infinity;
  readonly reliable: boolean = true;
  private isClosed = false;

  get closed(): boolean {
    return this.isClosed;
  }

  abstract write(data: Buffer): boolean;
  abstract close(): void;

  /** Subclasses call this exactly where the channel ends; repeated calls are ignored. */
  protected markClosed(error?: Error): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.emit('close', error);
  }

  override on<E extends keyof ChannelEvents>(event: E, listener: (...args: ChannelEvents[E]) => void): this {
    return super.on(event, listener as (...args: unknown[]) => void);
  }
  override once<E extends keyof ChannelEvents>(event: E, listener: (...args: ChannelEvents[E]) => void): this {
    return super.once(event, listener as (...args: unknown[]) => void);
  }
  override off<E extends keyof ChannelEvents>(event: E, listener: (...args: ChannelEvents[E]) => void): this {
    return super.off(event, listener as (...args: unknown[]) => void);
  }
  override emit<E extends keyof ChannelEvents>(event: E, ...args: ChannelEvents[E]): boolean {
    return super.emit(event, ...args);
  }
}
