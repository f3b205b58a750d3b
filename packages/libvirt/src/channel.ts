// A domain's virtio-serial channel, found in its live XML and opened as the Unix socket QEMU
// listens on; the connector behind `libvirt:DOMAIN` targets.
import { setTimeout as sleep } from 'node:timers/promises';
import { Channel, Connector, UnixSocketConnector } from '@porthole/transport';
import { DomainChannel, DomainDescription, findChannel, parseDomainXml } from './domain-xml';
import { LibvirtError } from './errors';
import { remoteHostOf } from './uri';
import { Virsh } from './virsh';

/** The port Porthole's agent opens in the guest. */
export const PORTHOLE_CHANNEL_NAME = 'org.porthole.agent.0';

export interface LocatedChannel {
  domain: DomainDescription;
  channel: DomainChannel & { path: string };
}

/**
 * The running domain and its unix channel named `channelName`, from the live XML. The socket path
 * is chosen by libvirt at each start (…/domain-ID-NAME/…), so it is looked up every time.
 */
export async function locateChannel(virsh: Virsh, domain: string, channelName: string): Promise<LocatedChannel> {
  const d = parseDomainXml(await virsh.dumpXml(domain));
  if (d.id === undefined) {
    const state = await virsh.domState(domain).catch(() => 'not running');
    throw new LibvirtError('not-running', `libvirt domain ${d.name || domain} is not running (${state}) at ${virsh.uri}`);
  }
  const channel = findChannel(d, channelName);
  const xml = `<channel type='unix'><source mode='bind'/><target type='virtio' name='${channelName}'/></channel>`;
  if (!channel) throw new LibvirtError('no-channel', `libvirt domain ${d.name} has no virtio channel named ${channelName}: add ${xml} to its devices`);
  if (channel.type !== 'unix' || !channel.path) {
    throw new LibvirtError('no-channel', `channel ${channelName} of libvirt domain ${d.name} is type='${channel.type}' without a socket; Porthole needs ${xml}`);
  }
  return { domain: d, channel: { ...channel, path: channel.path } };
}

export interface LibvirtChannelOptions {
  /** Domain name, id or UUID. */
  domain: string;
  /** Connection URI (default: LIBVIRT_DEFAULT_URI, else qemu:///system). */
  uri?: string;
  /** Port name (default org.porthole.agent.0). */
  channelName?: string;
  /** How long one attempt waits for the guest to open its end of the port (default 2 s; the caller retries). */
  guestWaitMs?: number;
}

/**
 * Opens a libvirt domain's channel: finds it in the live XML, connects to its socket, and waits until
 * libvirt sees the guest's end open. That state (`<target … state='connected'/>`) comes from QEMU's
 * VSERPORT_CHANGE events, which QEMU sends at most once a second per port; Porthole's agent holds the
 * port open while a host is connected (and closes and reopens it while none is), so it turns to
 * connected within about a second of our connecting when the agent runs, and stays disconnected while
 * the guest boots. Errors are LibvirtErrors; a domain that is gone, stopped or has no such channel is
 * `permanent` (connectWithRetry stops), while libvirtd restarting or a guest still booting is not.
 */
export class LibvirtChannelConnector implements Connector {
  readonly description: string;
  readonly virsh: Virsh;
  private readonly channelName: string;
  private readonly guestWaitMs: number;

  constructor(private readonly options: LibvirtChannelOptions) {
    this.virsh = new Virsh({ uri: options.uri });
    this.channelName = options.channelName ?? PORTHOLE_CHANNEL_NAME;
    this.guestWaitMs = options.guestWaitMs ?? 2000;
    this.description = `libvirt:${options.domain} (${this.virsh.uri})`;
  }

  locate(): Promise<LocatedChannel> {
    return locateChannel(this.virsh, this.options.domain, this.channelName);
  }

  async connect(signal?: AbortSignal): Promise<Channel> {
    const host = remoteHostOf(this.virsh.uri);
    if (host !== undefined) {
      throw new LibvirtError('remote-uri', `${this.virsh.uri} is libvirt on ${host}: a domain's channel is a socket on its own host, so run porthole there`);
    }
    const { domain, channel } = await this.locate();
    const socket = await new UnixSocketConnector(channel.path).connect(signal);
    if (channel.state !== 'disconnected') return socket;
    try {
      await this.waitForGuest(domain, socket, signal);
      return socket;
    } catch (err) {
      socket.close();
      throw err;
    }
  }

  private async waitForGuest(domain: DomainDescription, socket: Channel, signal?: AbortSignal): Promise<void> {
    const deadline = Date.now() + this.guestWaitMs;
    for (let delay = 100; ; delay = Math.min(delay * 2, 500)) {
      await sleep(Math.max(0, Math.min(delay, deadline - Date.now())), undefined, { signal });
      if (socket.closed) throw new Error(`the socket of libvirt domain ${domain.name} closed while waiting for the guest (the domain stopped?)`);
      const now = await this.locate();
      if (now.domain.id !== domain.id) throw new Error(`libvirt domain ${domain.name} restarted while waiting for the guest`);
      if (now.channel.state !== 'disconnected') return;
      if (Date.now() >= deadline) {
        throw new LibvirtError('guest-not-connected',
          `libvirt domain ${domain.name} is running, but its guest has not opened port ${this.channelName} (is porthole-agent installed and running in the guest?)`);
      }
    }
  }
}
