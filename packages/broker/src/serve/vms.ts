import type { Logger } from 'winston';
import { DEFAULT_STREAM_WINDOW, PortholeError, Session, v1 } from '@porthole/protocol';
import { Channel, Connector, memoryChannelPair } from '@porthole/transport';
import { ConnectOptions, PortholeClient } from '../client';
import { RoutedConnector } from '../route';
import { RelayedStream } from './relay';

/** A VM's session no client used for this long is closed. */
export const DEFAULT_IDLE_MS = 60_000;

export interface VmLinksOptions {
  /** How the daemon connects to VMs (timeout, logger). */
  connect?: ConnectOptions;
  /** Close a VM's session once no client used it for this long (ms). */
  idleMs?: number;
  logger?: Logger;
}

/** Joins a client's channel to a VM's session (see VmLinks.reach). */
export type Attach = (channel: Channel) => void;

/**
 * The daemon's one session with one VM, shared by all the VM's clients. A client speaks the protocol
 * to the daemon as it would to the agent, on a session of its own (a leg) that presents the agent's
 * hello; the streams it opens are relayed onto the VM's session. The session is opened when the first
 * client asks, and closed when no client used it for a while. What the daemon needs from a VM is a
 * connector to a channel that speaks the protocol, so another back end plugs in as another connector.
 */
class VmLink {
  private agent?: PortholeClient;
  private connecting?: Promise<void>;
  private readonly legs = new Set<Session>();
  private idleTimer?: NodeJS.Timeout;
  private closed = false;

  constructor(readonly target: string, private readonly options: VmLinksOptions, private readonly gone: (link: VmLink) => void) {}

  get clients(): number {
    return this.legs.size;
  }

  get connected(): boolean {
    return this.agent !== undefined;
  }

  /** The VM's session, connected first when there is none; `timeoutMs` for the agent to answer. */
  async session(timeoutMs: number): Promise<Session> {
    if (!this.agent) {
      this.connecting ??= this.connect(timeoutMs).finally(() => { this.connecting = undefined; });
      await this.connecting;
    }
    return this.agent!.ready();
  }

  /** A client's channel becomes a leg of `vm`, which must still be this VM's session (else the client is hung up on and calls again). */
  attach(channel: Channel, vm: Session): void {
    if (!vm.isReady || !this.agent) {
      channel.close();
      return;
    }
    const hello = vm.peerHello!;
    const leg: Session = new Session(channel, {
      role: 'agent',
      hello: {
        softwareVersion: hello.softwareVersion, capabilities: hello.capabilities, limits: hello.limits ?? {},
        os: hello.os, arch: hello.arch, hostname: hello.hostname, kernel: hello.kernel, instanceId: hello.instanceId,
      },
      // The client spends the credit the agent grants; the relay passes the agent's grants on.
      streamWindow: hello.streamWindow || DEFAULT_STREAM_WINDOW,
      maxFrameSize: hello.maxFrameSize || undefined,
      relayStream: (id, open) => RelayedStream.open(leg, id, open, vm),
    });
    clearTimeout(this.idleTimer);
    this.legs.add(leg);
    leg.once('close', () => {
      this.legs.delete(leg);
      this.armIdle();
    });
  }

  close(reason: string): void {
    this.closed = true;
    clearTimeout(this.idleTimer);
    const agent = this.agent;
    this.agent = undefined;
    for (const leg of [...this.legs]) leg.close(new Error(reason));
    agent?.close();
    this.gone(this);
  }

  private async connect(timeoutMs: number): Promise<void> {
    const log = this.options.logger;
    let agent: PortholeClient;
    try {
      agent = await PortholeClient.connect(this.target, { ...this.options.connect, timeoutMs, broker: false });
    } catch (err) {
      this.gone(this);
      throw err;
    }
    if (this.closed) {
      agent.close();
      throw new PortholeError(v1.ErrorCode.ERROR_CODE_CANCELLED, 'the broker daemon is stopping');
    }
    log?.info('vm connected', { target: this.target, agent: agent.hello?.softwareVersion });
    agent.on('event', (e: v1.Event) => { for (const leg of this.legs) leg.sendEvent(e); });
    // The VM went away or its agent restarted: the clients hang up and call again, which opens a new
    // session and shows them the agent's new hello (as a direct client reconnects after a lost channel).
    const lost = (err?: Error) => {
      if (this.agent !== agent) return;
      log?.warn('vm session lost', { target: this.target, error: err?.message });
      this.close(`the VM's session ended: ${err?.message ?? 'closed'}`);
    };
    agent.once('disconnect', lost).once('reset', lost);
    this.agent = agent;
    this.armIdle();
  }

  private armIdle(): void {
    if (this.legs.size > 0 || !this.agent) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      this.options.logger?.info('vm session closed', { target: this.target, reason: 'idle' });
      this.close('idle');
    }, this.options.idleMs ?? DEFAULT_IDLE_MS);
    this.idleTimer.unref();
  }
}

/**
 * The daemon's sessions with VMs, one per VM (keyed by the target as clients name it), and the way
 * clients join them: a connection on the daemon's socket, or a task of the daemon itself through an
 * in-process channel.
 */
export class VmLinks {
  private readonly links = new Map<string, VmLink>();

  constructor(private readonly options: VmLinksOptions = {}) {}

  /** Reach a VM (connecting to it when no session is open); resolves with the way to join a client to it. */
  async reach(target: string, timeoutMs: number): Promise<Attach> {
    let link = this.links.get(target);
    if (!link) {
      link = new VmLink(target, this.options, (l) => { if (this.links.get(target) === l) this.links.delete(target); });
      this.links.set(target, link);
    }
    const vm = await link.session(timeoutMs);
    const joined = link;
    return (channel) => joined.attach(channel, vm);
  }

  /** The daemon's own way to a VM: a client session inside the process, joined like any other client. */
  route(target: string, timeoutMs: number): RoutedConnector {
    const connector: Connector = {
      description: `${target} through this broker daemon`,
      connect: async () => {
        const attach = await this.reach(target, timeoutMs).catch((err: unknown) => {
          // The daemon already waited for the VM: the answer is final.
          throw Object.assign(PortholeError.from(err), { permanent: true });
        });
        const [near, far] = memoryChannelPair(target);
        attach(far);
        return near;
      },
    };
    return { connector, route: { via: 'daemon', detail: 'inside the broker daemon' } };
  }

  /** VMs with an open session, and the clients joined to them. */
  stats(): { vms: number; clients: number } {
    let vms = 0;
    let clients = 0;
    for (const link of this.links.values()) {
      if (link.connected) vms++;
      clients += link.clients;
    }
    return { vms, clients };
  }

  close(): void {
    for (const link of [...this.links.values()]) link.close('the broker daemon is stopping');
  }
}
