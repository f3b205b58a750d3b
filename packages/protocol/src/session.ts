import { EventEmitter } from 'node:events';
import * as os from 'node:os';
import { slabOf, type Channel, type Slab } from '@porthole/transport';
import { v1, PROTOCOL_VERSION } from './messages';
import { PortholeError, errors } from './errors';
import { FrameDecoder, frameHeader, DEFAULT_MAX_FRAME_SIZE } from './frame';
import { encodeStreamMessage, withStreamId } from './chunk-encoding';
import { Stream, StreamEndpoint, StreamWire } from './stream';
import { RepeatLimitedLogger, SessionLogger } from './log-limit';

export type { SessionLogger };

export interface SessionOptions {
  role: 'agent' | 'broker';
  hello: {
    softwareVersion: string;
    capabilities?: v1.Capability[];
    limits?: v1.PolicyLimits.$Properties;
    os?: string;
    arch?: string;
    hostname?: string;
    kernel?: string;
    /** Presented as this side's instance: a broker daemon passes on its VM agent's hello. Default: random. */
    instanceId?: string;
  };
  /** A stream the peer opened (the agent's request entry point). */
  onStream?: (stream: Stream) => void;
  /**
   * Instead of onStream: a stream the peer opened is relayed, not served here (a broker daemon passes its
   * clients' requests on to a VM). Returns where the stream's traffic goes, or undefined when it already
   * refused the stream (relayControl with a reset).
   */
  relayStream?: (id: number, open: v1.Open) => StreamEndpoint | undefined;
  /** Credit granted per stream, in encoded bytes. */
  streamWindow?: number;
  /**
   * 0 turns keepalive off. Default: broker 5000, agent 0. A session that received no frame for
   * keepaliveTimeoutMs closes. A broker waits for its agent's hello as long as its caller says
   * (ready()); an agent also drops a peer that never said hello, so that the next host gets greeted.
   */
  keepaliveIntervalMs?: number;
  keepaliveTimeoutMs?: number;
  maxFrameSize?: number;
  /** See FrameDecoderOptions.frameTimeoutMs. */
  frameTimeoutMs?: number;
  /**
   * Bytes of frames this side may hand to a channel that asked it to wait, before it stops reading
   * the peer (default 1 MiB): the answers to a peer that sends requests but never reads are bounded.
   */
  maxBacklog?: number;
  logger?: SessionLogger;
}

/** Credit per stream by default: more than bandwidth × round trip of a local socket pair (~240 KiB). */
export const DEFAULT_STREAM_WINDOW = 4 * 1024 * 1024;

/**
 * Credit per stream for a receiver behind a slow port: the agent on virtio-serial or xenstore. It bounds
 * what a small request can find queued ahead of it on the port, and it sets the size of the host's data
 * messages (two must fit, see chunkSizeFor): here two of 512 KiB. Each message costs the agent a fixed
 * ~7 ms of guest CPU under TCG, so 512 KiB ones injected 1.15–1.77× as fast as 128 KiB ones in three
 * paired runs, while a small request beside the injection waited about as long (the agent hashes a large
 * chunk between event-loop turns). docs/BENCHMARKS.md, "Larger messages to and from the agent".
 */
export const SLOW_PORT_STREAM_WINDOW = 2 * (512 + 4) * 1024;

/**
 * Credit per stream over a serial line: its bytes cost time, not the agent's CPU, so larger messages
 * buy nothing there and a request beside a transfer would wait longer.
 */
export const SERIAL_STREAM_WINDOW = 512 * 1024;

/**
 * Frames up to this size jump ahead of queued bulk data, so a small request is not stuck behind a
 * transfer; never ahead of queued data of their own stream, whose messages keep their order.
 */
const SMALL_FRAME = 8 * 1024;

/**
 * Default for SessionOptions.maxBacklog. Only frames the channel takes after it asked writers to wait
 * count: pongs, credit, resets and replies, which nobody waits for. A peer that reads never gets near it.
 */
export const DEFAULT_MAX_BACKLOG = 1024 * 1024;
/** What one queued frame costs beyond its bytes (the channel's write request, a waiter): a flood of tiny frames counts. */
const QUEUED_FRAME_COST = 256;

/** A frame waiting for the channel; `streamId` 0 when it belongs to no stream or may pass its stream's data (credit). */
type QueuedFrame = { parts: Buffer[]; handedOver: () => void; streamId: number; written?: () => void };

const silent: SessionLogger = { debug() {}, info() {}, warn() {}, error() {} };

/**
 * 16 hex digits that tell this process's session from a restarted peer's. They must differ between
 * instances, not be secret: Math.random (seeded by V8 from the OS) spares an idle agent node:crypto.
 */
function newInstanceId(): string {
  const word = () => Math.floor(Math.random() * 2 ** 32).toString(16).padStart(8, '0');
  return word() + word();
}

/**
 * One protocol session over one channel: handshake, keepalive and the
 * multiplexing of streams. Frames on byte channels, whole packets on packet
 * channels; nothing above this class sees either.
 */
export class Session extends EventEmitter {
  readonly instanceId: string;
  peerHello?: v1.Hello;
  private readonly streams = new Map<number, StreamEndpoint>();
  private nextStreamId: number;
  private readonly window: number;
  private readonly decoder?: FrameDecoder;
  /** Frames carry a payload CRC32C (see onHello). */
  private payloadCrc = true;
  /** The peer controls what is warned about: repeats are limited. */
  private readonly log: RepeatLimitedLogger;
  private closedError?: Error;
  private isClosed = false;
  private readyWaiters: Array<{ resolve: (h: v1.Hello) => void; reject: (e: unknown) => void }> = [];
  private pings = new Map<number, (t: number) => void>();
  /** Starts anywhere: a pong left in the channel for an earlier host must not answer our first ping. */
  private pingSeq = 1 + Math.floor(Math.random() * 2 ** 31);
  private lastReceived = Date.now();
  private keepaliveTimer?: NodeJS.Timeout;
  /** Bulk frames waiting for the channel; small ones (control, requests) never wait, so they pass these. */
  private readonly bulkQueue: QueuedFrame[] = [];
  /** Frames per stream in bulkQueue: a later frame of that stream, however small, queues behind them. */
  private readonly queuedPerStream = new Map<number, number>();
  /** The channel asked us to wait for 'drain'. */
  private channelFull = false;
  /** Bytes handed to the channel since it asked us to wait. */
  private backlog = 0;
  /** The channel was asked to stop reading the peer until it drains. */
  private inputPaused = false;
  private readonly maxBacklog: number;
  private drainWaiters: Array<() => void> = [];
  private readonly wire: StreamWire;
  private requestSeq = 0;

  constructor(readonly channel: Channel, private readonly options: SessionOptions) {
    super();
    this.instanceId = options.hello.instanceId ?? newInstanceId();
    this.log = new RepeatLimitedLogger(options.logger ?? silent);
    this.window = options.streamWindow ?? DEFAULT_STREAM_WINDOW;
    this.maxBacklog = options.maxBacklog ?? DEFAULT_MAX_BACKLOG;
    this.nextStreamId = options.role === 'broker' ? 1 : 2;
    if (channel.kind === 'bytes') {
      this.decoder = new FrameDecoder((payload) => this.receive(payload), {
        maxFrameSize: options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE,
        frameTimeoutMs: options.frameTimeoutMs,
        onGarbage: (reason) => this.log.debug('skipping bytes on the channel', { reason, channel: channel.description }),
        requirePayloadCrc: !channel.reliable,
      });
    }
    this.wire = {
      sendEnvelope: (envelope) => {
        const encoded = v1.Envelope.encode(envelope).finish();
        const part = Buffer.from(encoded.buffer, encoded.byteOffset, encoded.length);
        // Credit concerns what the peer sends: it may pass this stream's queued data; close and reset may not.
        return { size: encoded.length, written: this.writePayload([part], envelope.credit ? 0 : envelope.streamId ?? 0) };
      },
      measure: (streamId, message) => {
        const parts = encodeStreamMessage(streamId, message);
        return { size: parts.reduce((n, p) => n + p.length, 0), parts };
      },
      sendEncoded: (parts, written) => this.writePayload(parts, 0, written),
      forget: (id) => this.streams.delete(id),
    };
    channel.on('data', this.onData);
    channel.on('drain', this.onDrain);
    channel.on('close', this.onClose);
    channel.on('discontinuity', this.onDiscontinuity);
    this.sendHello(false);
    const interval = options.keepaliveIntervalMs ?? (options.role === 'broker' ? 5000 : 0);
    if (interval > 0) this.startKeepalive(interval, options.keepaliveTimeoutMs ?? 15000);
  }

  get isReady(): boolean {
    return this.peerHello !== undefined && !this.isClosed;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Wait for the handshake; rejects with a clear cause when nobody answers or the versions differ. */
  ready(timeoutMs = 10000): Promise<v1.Hello> {
    if (this.isClosed) return Promise.reject(this.closedReason());
    if (this.peerHello) return Promise.resolve(this.peerHello);
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: (h: v1.Hello) => { clearTimeout(timer); resolve(h); },
        reject: (e: unknown) => { clearTimeout(timer); reject(e); },
      };
      const timer = setTimeout(() => {
        this.readyWaiters = this.readyWaiters.filter((w) => w !== waiter);
        const peer = this.options.role === 'broker' ? 'agent' : 'broker';
        reject(errors.timeout(`no ${peer} answered on ${this.channel.description} within ${timeoutMs} ms (is porthole-agent running in the guest?)`));
      }, timeoutMs);
      this.readyWaiters.push(waiter);
    });
  }

  /** Open a request stream towards the peer. */
  openStream(open: v1.Open.$Properties): Stream {
    const message = v1.Open.create({ ...open, requestId: open.requestId || this.newRequestId() });
    return this.register(message, (id, peer) => new Stream(id, message, this.wire, peer.streamWindow || DEFAULT_STREAM_WINDOW, this.window, peer.maxFrameSize || DEFAULT_MAX_FRAME_SIZE));
  }

  /**
   * Open a stream towards the peer whose traffic goes to `endpoint`, a relay (see relayStream); returns
   * its id. The peer grants it the window of its hello, and this side the window of its own.
   */
  openRelayed(open: v1.Open.$Properties, endpoint: StreamEndpoint): number {
    let id = 0;
    this.register(open, (assigned) => { id = assigned; return endpoint; });
    return id;
  }

  /**
   * Send a stream message a relay received on another session as stream `fromId`, bytes as they came,
   * under this session's stream `toId`. Its encoded size here is what the peer counts against credit.
   */
  relayMessage(fromId: number, toId: number, payload: Buffer): { size: number; written: Promise<void> } {
    const parts = withStreamId(payload, fromId, toId);
    let size = 0;
    for (const p of parts) size += p.length;
    return { size, written: this.writePayload(parts, toId) };
  }

  /** Credit, half-close or reset on a relayed stream. */
  relayControl(streamId: number, body: Pick<v1.Envelope.$Properties, 'credit' | 'close' | 'reset'>): void {
    if (this.isClosed) return;
    void this.wire.sendEnvelope({ streamId, ...body }).written.catch(() => undefined);
  }

  /** A relayed stream is over on this session: later traffic for it is dropped. */
  endRelayed(streamId: number): void {
    this.streams.delete(streamId);
  }

  /** Round trip time in ms. */
  ping(timeoutMs = 5000): Promise<number> {
    if (this.isClosed) return Promise.reject(this.closedReason());
    const nonce = this.pingSeq++;
    const started = performance.now();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pings.delete(nonce);
        reject(errors.timeout(`no pong from the peer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pings.set(nonce, (t) => { clearTimeout(timer); resolve(t - started); });
      void this.wire.sendEnvelope({ ping: { nonce } }).written.catch(reject);
    });
  }

  sendEvent(event: v1.Event.$Properties): boolean {
    if (!this.isReady) return false;
    void this.wire.sendEnvelope({ event }).written.catch(() => undefined);
    return true;
  }

  close(error?: Error): void {
    if (this.isClosed) return;
    this.shutdown(error ?? new Error('session closed'));
    this.channel.close();
  }

  /** Credit this side grants per stream (announced in its hello). */
  get streamWindow(): number {
    return this.window;
  }

  /** Streams currently open (for diagnostics). */
  get openStreams(): number {
    return this.streams.size;
  }

  // ------------------------------------------------------------ internals

  private register<T extends StreamEndpoint>(open: v1.Open.$Properties, make: (id: number, peer: v1.Hello) => T): T {
    if (this.isClosed) throw this.closedReason();
    if (!this.peerHello) throw errors.sessionReset('the session is not established (no hello from the peer yet)');
    const id = this.nextStreamId;
    this.nextStreamId += 2;
    const endpoint = make(id, this.peerHello);
    this.streams.set(id, endpoint);
    void this.wire.sendEnvelope({ streamId: id, open }).written.catch((e) => endpoint.fail(PortholeError.from(e)));
    return endpoint;
  }

  private newRequestId(): string {
    return `${this.instanceId}-${(++this.requestSeq).toString(36)}`;
  }

  private sendHello(reply: boolean): void {
    const h = this.options.hello;
    const hello: v1.Hello.$Properties = {
      protocolVersion: PROTOCOL_VERSION,
      role: this.options.role === 'agent' ? v1.Role.ROLE_AGENT : v1.Role.ROLE_BROKER,
      softwareVersion: h.softwareVersion,
      instanceId: this.instanceId,
      os: h.os ?? os.platform(),
      arch: h.arch ?? os.arch(),
      hostname: h.hostname ?? os.hostname(),
      kernel: h.kernel ?? os.release(),
      capabilities: h.capabilities ?? [],
      limits: h.limits ?? {},
      maxFrameSize: this.options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE,
      streamWindow: this.window,
      reply,
      answersInstanceId: reply ? this.peerHello?.instanceId ?? '' : '',
      payloadCrcOptional: this.channel.kind === 'bytes' && this.channel.reliable,
    };
    void this.wire.sendEnvelope({ hello }).written.catch(() => undefined);
  }

  /**
   * Queue one frame of stream `streamId` (0: of none); resolves once the channel took it and can take
   * more (the writer's backpressure). A relay sends a stream's messages without waiting for each, so
   * the order within a stream is kept here: an exec's exit must not pass the last of its output.
   * `written`: see Channel.writeParts (never called for a frame dropped with the session).
   */
  private writePayload(parts: Buffer[], streamId = 0, written?: () => void): Promise<void> {
    if (this.isClosed) return Promise.reject(this.closedReason());
    let size = 0;
    for (const p of parts) size += p.length;
    return new Promise((handedOver) => {
      if (size > SMALL_FRAME || (streamId !== 0 && this.queuedPerStream.has(streamId))) {
        this.bulkQueue.push({ parts, handedOver, streamId, written });
        if (streamId !== 0) this.queuedPerStream.set(streamId, (this.queuedPerStream.get(streamId) ?? 0) + 1);
        this.flushBulk();
        return;
      }
      // A small frame (request, reply, credit, control) goes to the channel at once, even while it asks
      // writers to wait: that answer is advisory, and holding the frame until the bulk data already in the
      // channel drains would cost a request a whole write cycle. Its writer still waits for the drain.
      if (this.writeFrame(parts, written) && !this.channelFull) handedOver();
      else this.waitForDrain(handedOver);
    });
  }

  private flushBulk(): void {
    while (!this.channelFull && !this.isClosed) {
      const next = this.bulkQueue.shift();
      if (!next) return;
      if (next.streamId !== 0) {
        const left = this.queuedPerStream.get(next.streamId)! - 1;
        if (left > 0) this.queuedPerStream.set(next.streamId, left);
        else this.queuedPerStream.delete(next.streamId);
      }
      // A bulk writer goes on after the event loop has polled I/O: a run of chunk encodings
      // would otherwise hold back replies and small requests waiting to be read or written.
      if (this.writeFrame(next.parts, next.written)) setImmediate(next.handedOver);
      else this.waitForDrain(next.handedOver);
    }
  }

  private waitForDrain(handedOver: () => void): void {
    this.channelFull = true;
    this.drainWaiters.push(handedOver);
  }

  private writeFrame(parts: Buffer[], written?: () => void): boolean {
    if (this.channelFull) this.growBacklog(parts);
    // A channel given one joined copy holds none of the parts (`written` at once); one given a part itself, maybe.
    if (this.channel.kind === 'packets') {
      if (parts.length === 1) return this.channel.write(parts[0]);
      const ok = this.channel.write(Buffer.concat(parts));
      written?.();
      return ok;
    }
    const header = frameHeader(parts, this.payloadCrc);
    if (this.channel.writeParts) return this.channel.writeParts([header, ...parts], written);
    const ok = this.channel.write(Buffer.concat([header, ...parts]));
    written?.();
    return ok;
  }

  /** A frame goes to a channel that asked us to wait: past the bound, the peer is not read until it drains. */
  private growBacklog(parts: Buffer[]): void {
    this.backlog += QUEUED_FRAME_COST;
    for (const p of parts) this.backlog += p.length;
    if (this.backlog <= this.maxBacklog || this.inputPaused) return;
    this.inputPaused = true;
    this.channel.pause?.();
    this.log.debug('the peer does not read what this side sends: reading from it paused until the channel drains', {
      channel: this.channel.description, waitingBytes: this.backlog,
    });
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.decoder) this.decoder.push(chunk);
    else this.receive(chunk);
  };

  private readonly onDrain = (): void => {
    this.channelFull = false;
    this.backlog = 0;
    if (this.inputPaused) {
      this.inputPaused = false;
      this.channel.resume?.();
    }
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
    this.flushBulk();
  };

  private readonly onDiscontinuity = (): void => {
    this.decoder?.reset();
    // The next peer on this channel may not take unchecked frames: checked until its hello says so.
    this.payloadCrc = true;
  };

  private readonly onClose = (error?: Error): void => {
    this.shutdown(error ?? new Error(`channel ${this.channel.description} closed`));
  };

  private shutdown(error: Error): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closedError = error;
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    this.channel.off('data', this.onData);
    this.channel.off('drain', this.onDrain);
    this.channel.off('close', this.onClose);
    this.channel.off('discontinuity', this.onDiscontinuity);
    this.decoder?.reset();
    const reason = this.closedReason();
    this.failAll(reason);
    for (const w of this.readyWaiters.splice(0)) w.reject(reason);
    for (const w of this.drainWaiters.splice(0)) w();
    for (const f of this.bulkQueue.splice(0)) f.handedOver();
    this.queuedPerStream.clear();
    this.log.flush();
    this.emit('close', error);
  }

  private closedReason(): PortholeError {
    return errors.sessionReset(`connection lost: ${this.closedError?.message ?? 'closed'}`);
  }

  private failAll(error: PortholeError): void {
    const streams = [...this.streams.values()];
    this.streams.clear();
    for (const s of streams) s.fail(error);
  }

  private receive(payload: Buffer): void {
    let envelope: v1.Envelope;
    try {
      envelope = v1.Envelope.decode(payload);
    } catch (err) {
      // A valid frame with an undecodable body: a bug or a newer peer; never fatal.
      this.log.warn('undecodable message ignored', { error: (err as Error).message, bytes: payload.length });
      return;
    }
    this.lastReceived = Date.now();
    // A large payload is a view of a read slab: a stream holds it while the message is queued or lent;
    // anything else may keep its bytes for good, so the slab is never reused.
    const slab = slabOf(payload);
    if (slab && envelope.body !== 'message') slab.pin();
    try {
      this.dispatch(envelope, payload, slab);
    } catch (err) {
      this.log.error('message handling failed', { error: (err as Error).message, body: envelope.body });
    }
  }

  private dispatch(envelope: v1.Envelope, payload: Buffer, slab?: Slab): void {
    const id = envelope.streamId;
    switch (envelope.body) {
      case 'hello':
        return this.onHello(envelope.hello as v1.Hello);
      case 'ping':
        void this.wire.sendEnvelope({ pong: { nonce: envelope.ping?.nonce ?? 0 } }).written.catch(() => undefined);
        return;
      case 'pong':
        {
          const nonce = envelope.pong?.nonce ?? 0;
          this.pings.get(nonce)?.(performance.now());
          this.pings.delete(nonce);
        }
        return;
      case 'event':
        this.emit('event', envelope.event!);
        return;
      case 'open':
        return this.onOpen(id, envelope.open as v1.Open);
      default:
        break;
    }
    const stream = this.streams.get(id);
    if (!stream) {
      // Late traffic for a stream that was reset or belongs to a previous session.
      this.log.debug('message for an unknown stream dropped', { stream: id, body: envelope.body });
      return;
    }
    switch (envelope.body) {
      case 'credit':
        return stream.grant(envelope.credit?.bytes ?? 0);
      case 'message':
        return stream.deliver(envelope.message as v1.StreamMessage, payload.length, slab, payload);
      case 'close':
        return stream.remoteEnd();
      case 'reset':
        this.streams.delete(id);
        return stream.fail(PortholeError.fromProto(envelope.reset!.error));
      default:
        this.log.debug('envelope without a body ignored', { stream: id });
    }
  }

  private onHello(hello: v1.Hello): void {
    if (hello.reply && hello.answersInstanceId && hello.answersInstanceId !== this.instanceId) {
      // Left in the channel for the host before us: our own answer is still to come.
      this.log.debug('a hello answering another instance ignored', { answers: hello.answersInstanceId });
      return;
    }
    if (hello.protocolVersion !== PROTOCOL_VERSION) {
      const err = errors.protocol(
        `protocol version mismatch: the peer (${hello.softwareVersion || 'unknown'}) speaks v${hello.protocolVersion}, this side v${PROTOCOL_VERSION}`,
      );
      this.log.error(err.message);
      for (const w of this.readyWaiters.splice(0)) w.reject(err);
      this.emit('mismatch', err);
      return;
    }
    const established = this.peerHello !== undefined;
    const restarted = established && (!hello.reply || hello.instanceId !== this.peerHello!.instanceId);
    if (restarted) {
      const err = errors.sessionReset(
        hello.instanceId !== this.peerHello!.instanceId ? 'the peer restarted; requests in flight were lost' : 'the peer reconnected; requests in flight were lost',
      );
      this.failAll(err);
      this.emit('reset', err);
    }
    this.peerHello = hello;
    // Both sides' channels cannot corrupt (each hello says so of its own): CRC32C of every payload is
    // CPU time with nothing to find. A peer that does not know the field keeps getting checked frames.
    this.payloadCrc = !(this.channel.kind === 'bytes' && this.channel.reliable && hello.payloadCrcOptional);
    if (!hello.reply) this.sendHello(true);
    this.lastReceived = Date.now();
    for (const w of this.readyWaiters.splice(0)) w.resolve(hello);
    if (!established || restarted) this.emit('ready', hello);
  }

  private onOpen(id: number, open: v1.Open): void {
    const peerParity = this.options.role === 'broker' ? 0 : 1;
    if (id === 0 || id % 2 !== peerParity || this.streams.has(id)) {
      void this.wire.sendEnvelope({
        streamId: id,
        reset: { error: errors.protocol(`stream id ${id} is not valid for a new stream`).toProto() },
      }).written.catch(() => undefined);
      return;
    }
    if (!this.peerHello) {
      // The peer opened a stream before we saw its hello (e.g. our reply was lost after a restart).
      void this.wire.sendEnvelope({ streamId: id, reset: { error: errors.sessionReset('no hello received yet; send hello first').toProto() } })
        .written.catch(() => undefined);
      this.sendHello(false);
      return;
    }
    if (this.options.relayStream) {
      const endpoint = this.options.relayStream(id, open);
      if (endpoint) this.streams.set(id, endpoint);
      return;
    }
    const stream = new Stream(id, open, this.wire, this.peerHello.streamWindow || DEFAULT_STREAM_WINDOW, this.window, this.peerHello.maxFrameSize || DEFAULT_MAX_FRAME_SIZE);
    this.streams.set(id, stream);
    if (!this.options.onStream) {
      stream.reset(errors.unsupported('this side accepts no requests'));
      return;
    }
    this.options.onStream(stream);
  }

  private startKeepalive(interval: number, timeout: number): void {
    let lastTick = Date.now();
    this.keepaliveTimer = setInterval(() => {
      const now = Date.now();
      // A tick this late means this process did not run (busy, starved of CPU): the peer's answers may
      // be waiting unread, as timers run before sockets are read. Judge the peer at the next tick.
      const late = now - lastTick > 2 * interval;
      lastTick = now;
      if (!this.peerHello && this.options.role === 'broker') return;
      if (!late && now - this.lastReceived > timeout) {
        // Decided after the next poll for input (see FrameDecoder): a frozen process reads what came meanwhile first.
        setImmediate(() => {
          if (Date.now() - this.lastReceived > timeout) this.close(errors.timeout(`the peer stopped answering: nothing received from the peer for ${timeout} ms`));
        });
        return;
      }
      if (this.peerHello) this.ping(timeout).catch(() => undefined);
    }, interval);
    this.keepaliveTimer.unref();
  }
}
