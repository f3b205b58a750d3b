import { DEFAULT_STREAM_WINDOW, PortholeError, Session, StreamEndpoint, v1 } from '@porthole/protocol';
import type { Slab } from '@porthole/transport';

/**
 * Converts the credit a receiver grants, counted in its own session's envelope bytes, into credit for
 * the sender on the other session. The two envelopes of one message differ by the length of their
 * stream ids, so a grant is matched to the messages it covers: receivers grant for whole messages, in
 * the order they came. Runs of messages of one size (a transfer's chunks) take one entry.
 */
export class CreditLedger {
  private readonly runs: Array<{ inSize: number; outSize: number; count: number }> = [];
  private head = 0;
  /** Granted bytes not yet matched to a whole message. */
  private unmatched = 0;

  /** A message of `inSize` bytes on the sender's session went on as `outSize` bytes to the receiver. */
  forwarded(inSize: number, outSize: number): void {
    const last = this.runs[this.runs.length - 1];
    if (this.runs.length > this.head && last.inSize === inSize && last.outSize === outSize) last.count++;
    else this.runs.push({ inSize, outSize, count: 1 });
  }

  /** The receiver granted `outBytes`: the bytes to grant the sender. */
  grant(outBytes: number): number {
    this.unmatched += outBytes;
    let inBytes = 0;
    while (this.head < this.runs.length) {
      const run = this.runs[this.head];
      const whole = Math.min(run.count, Math.floor(this.unmatched / run.outSize));
      inBytes += whole * run.inSize;
      this.unmatched -= whole * run.outSize;
      run.count -= whole;
      if (run.count > 0) break;
      this.head++;
    }
    if (this.head === this.runs.length) {
      this.runs.length = 0;
      this.head = 0;
      // More than was forwarded: the receiver widened its window; that passes on as it is.
      inBytes += this.unmatched;
      this.unmatched = 0;
    } else if (this.head > 64) {
      this.runs.splice(0, this.head);
      this.head = 0;
    }
    return inBytes;
  }
}

/**
 * One client stream carried on a VM's session: the client's stream `clientId` is the daemon's stream
 * `vmId` towards the agent. Each message goes on as it was received, with the stream id changed, the
 * moment it arrives; credit passes through both ways (converted by a ledger), so what the daemon holds
 * for a stream is never more than its receiver granted. Close and reset pass through too; a client
 * that goes away resets its streams, which stops their commands in the guest as a lost channel would.
 */
export class RelayedStream {
  private vmId = 0;
  /** Client → VM messages, and VM → client. */
  private readonly up = new CreditLedger();
  private readonly down = new CreditLedger();
  private clientEnded = false;
  private vmEnded = false;
  private finished = false;
  /**
   * Credit the agent got that the client never granted (the daemon's window on the VM's session is
   * larger than the client's): kept back from the client's grants.
   */
  private withheld = 0;

  /** The client's side; register it on the client's session under `clientId`. */
  readonly clientSide: StreamEndpoint = {
    deliver: (_m, size, slab, payload) => this.forward(this.clientId, this.vm, this.vmId, this.up, size, slab, payload),
    grant: (bytes) => {
      let g = this.down.grant(bytes);
      const kept = Math.min(this.withheld, g);
      this.withheld -= kept;
      g -= kept;
      if (g > 0) this.vm.relayControl(this.vmId, { credit: { bytes: g } });
    },
    remoteEnd: () => {
      this.clientEnded = true;
      this.vm.relayControl(this.vmId, { close: {} });
      this.finishIfEnded();
    },
    fail: (error) => this.abort(this.vm, this.vmId, error),
  };

  /** The agent's side, on the VM's session. */
  private readonly vmSide: StreamEndpoint = {
    deliver: (_m, size, slab, payload) => this.forward(this.vmId, this.client, this.clientId, this.down, size, slab, payload),
    grant: (bytes) => {
      const g = this.up.grant(bytes);
      if (g > 0) this.client.relayControl(this.clientId, { credit: { bytes: g } });
    },
    remoteEnd: () => {
      this.vmEnded = true;
      this.client.relayControl(this.clientId, { close: {} });
      this.finishIfEnded();
    },
    fail: (error) => this.abort(this.client, this.clientId, error),
  };

  /**
   * Relay the stream a client opened: the same Open goes to the agent. Returns the client's side, or
   * undefined when the VM's session cannot take it (the client's stream is then reset with the cause).
   */
  static open(client: Session, clientId: number, open: v1.Open, vm: Session): StreamEndpoint | undefined {
    const relay = new RelayedStream(client, clientId, vm);
    try {
      relay.vmId = vm.openRelayed(open, relay.vmSide);
    } catch (err) {
      client.relayControl(clientId, { reset: { error: PortholeError.from(err).toProto() } });
      return undefined;
    }
    // The agent may send as much as the daemon's window on the VM's session; the client granted its own.
    const clientWindow = client.peerHello?.streamWindow || DEFAULT_STREAM_WINDOW;
    const difference = clientWindow - vm.streamWindow;
    if (difference > 0) vm.relayControl(relay.vmId, { credit: { bytes: difference } });
    else relay.withheld = -difference;
    return relay.clientSide;
  }

  private constructor(private readonly client: Session, private readonly clientId: number, private readonly vm: Session) {}

  private forward(fromId: number, to: Session, toId: number, ledger: CreditLedger, size: number, slab: Slab | undefined, payload: Buffer): void {
    if (this.finished) return;
    // The bytes go out as they are and may wait in the socket's queue: their read slab is never reused.
    slab?.pin();
    const sent = to.relayMessage(fromId, toId, payload);
    sent.written.catch(() => undefined);
    ledger.forwarded(size, sent.size);
  }

  private abort(to: Session, toId: number, error: PortholeError): void {
    if (this.finished) return;
    to.relayControl(toId, { reset: { error: error.toProto() } });
    this.finish();
  }

  private finishIfEnded(): void {
    if (this.clientEnded && this.vmEnded) this.finish();
  }

  private finish(): void {
    this.finished = true;
    this.client.endRelayed(this.clientId);
    this.vm.endRelayed(this.vmId);
  }
}
