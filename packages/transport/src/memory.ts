import { Channel, ChannelBase } from './channel';

/** Bytes queued towards the other end before writers are asked to wait, as a socket would. */
const HIGH_WATER = 1024 * 1024;

/** One end of an in-process packet channel: writes arrive whole at the other end, on a later turn of the event loop. */
class MemoryChannel extends ChannelBase {
  readonly kind = 'packets' as const;
  peer!: MemoryChannel;
  private queue: Buffer[] = [];
  private queued = 0;
  private writersWaiting = false;

  constructor(readonly description: string) {
    super();
  }

  write(data: Buffer): boolean {
    if (this.closed || this.peer.closed) return false;
    if (this.queue.length === 0) setImmediate(this.flush);
    this.queue.push(data);
    this.queued += data.length;
    if (this.queued < HIGH_WATER) return true;
    this.writersWaiting = true;
    return false;
  }

  private readonly flush = (): void => {
    const packets = this.queue;
    this.queue = [];
    this.queued = 0;
    for (const p of packets) {
      if (this.peer.closed) return;
      this.peer.emit('data', p);
    }
    if (this.writersWaiting) {
      this.writersWaiting = false;
      this.emit('drain');
    }
  };

  close(): void {
    if (this.closed) return;
    this.markClosed();
    // What was written before the close still arrives, then the other end closes too (as a socket's peer sees EOF).
    setImmediate(() => {
      this.flush();
      this.peer.close();
    });
  }
}

/**
 * Two connected in-process packet channels: a session inside a process talks to another one with no
 * socket and no framing (a broker daemon's own tasks reach its VM connections this way).
 */
export function memoryChannelPair(description: string): [Channel, Channel] {
  const a = new MemoryChannel(`${description} (near end)`);
  const b = new MemoryChannel(`${description} (far end)`);
  a.peer = b;
  b.peer = a;
  return [a, b];
}
