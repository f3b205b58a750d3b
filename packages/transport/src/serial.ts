import { Channel, ChannelBase, Connector } from './channel';
import { requireBesideExecutable } from './native-modules';

interface SerialPortLike {
  on(event: 'data', l: (b: Buffer) => void): unknown;
  on(event: 'drain' | 'close', l: () => void): unknown;
  on(event: 'error', l: (e: Error) => void): unknown;
  open(cb: (err: Error | null) => void): void;
  write(data: Buffer): boolean;
  pause(): unknown;
  resume(): unknown;
  close(cb?: (err: Error | null) => void): void;
  isOpen: boolean;
  /** The platform binding of an open port (serialport's own field). */
  port?: { poller?: PollerLike };
}

/** The fd poller of @serialport/bindings-cpp on Unix: an EventEmitter over one uv_poll_t. */
interface PollerLike {
  poll(events: number): void;
  listenerCount(event: string): number;
}

const UV_READABLE = 1;
const UV_WRITABLE = 2;

/**
 * @serialport/bindings-cpp (13.0.0) restarts its uv_poll_t with only the event
 * asked for last, so a read that finds the line empty while a write waits for
 * room drops the write's interest: once the peer has nothing more to send, the
 * write never resumes and the session stalls. Ask for every event a waiter is
 * still listening for (its `once` calls poll before adding the new listener).
 */
function keepPollInterest(poller: PollerLike | undefined): void {
  if (!poller || typeof poller.poll !== 'function' || typeof poller.listenerCount !== 'function') return;
  const poll = poller.poll.bind(poller);
  poller.poll = (events: number) => poll(
    events
    | (poller.listenerCount('readable') > 0 ? UV_READABLE : 0)
    | (poller.listenerCount('writable') > 0 ? UV_WRITABLE : 0),
  );
}

/**
 * Load serialport only when a serial channel is used: its native bindings are
 * optional (a single-executable agent on virtio-serial runs without them).
 */
function loadSerialPort(): new (o: { path: string; baudRate: number; autoOpen: boolean }) => SerialPortLike {
  try {
    return requireBesideExecutable<{ SerialPort: never }>('serialport', 'PORTHOLE_SERIALPORT_PATH').SerialPort;
  } catch (err) {
    throw new Error(`serial channels need the serialport module and its native bindings: ${(err as Error).message}`);
  }
}

class SerialChannel extends ChannelBase {
  readonly kind = 'bytes' as const;
  /** A line can lose or garble bytes (noise, a wrong baud rate, another writer). */
  override readonly reliable = false;

  constructor(private readonly port: SerialPortLike, readonly description: string) {
    super();
    port.on('data', (b) => this.emit('data', b));
    port.on('drain', () => this.emit('drain'));
    port.on('error', (e) => this.markClosed(new Error(`${description}: ${e.message}`, { cause: e })));
    port.on('close', () => this.markClosed());
  }

  write(data: Buffer): boolean {
    if (this.closed) return false;
    return this.port.write(data);
  }

  pause(): void {
    this.port.pause();
  }

  resume(): void {
    this.port.resume();
  }

  close(): void {
    if (this.port.isOpen) this.port.close();
    this.markClosed();
  }
}

/** A serial TTY (an emulated ttyS/COM port) through serialport. */
export class SerialConnector implements Connector {
  readonly description: string;

  constructor(private readonly path: string, private readonly options: { baudRate?: number } = {}) {
    this.description = `serial:${path}`;
  }

  connect(): Promise<Channel> {
    const SerialPort = loadSerialPort();
    const port = new SerialPort({ path: this.path, baudRate: this.options.baudRate ?? 115200, autoOpen: false });
    return new Promise((resolve, reject) => {
      port.open((err) => {
        if (err) reject(new Error(`cannot open serial port ${this.path}: ${err.message}`, { cause: err }));
        else {
          keepPollInterest(port.port?.poller);
          resolve(new SerialChannel(port, this.description));
        }
      });
    });
  }
}
