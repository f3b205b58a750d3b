// Which agent drives a VM: Porthole's when the VM has its port, else qemu-guest-agent's.
import { locateChannel, parseLibvirtTarget, Virsh } from '@porthole/libvirt';
import { ConnectOptions, PortholeClient } from './client';
import type { RoutedConnector } from './route';
import { QGA_PORT_NAME, QgaGuest } from './qga-guest';
import { LibvirtQga } from './qga-libvirt';
import { PORTHOLE_PORT_NAME } from './targets';

export type Guest = PortholeClient | QgaGuest;

/** The error a libvirt target gives when its domain has no Porthole port, or no agent opened it. */
function noPortholeAgent(err: unknown): boolean {
  const m = (err as Error)?.message ?? '';
  return m.includes(`no virtio channel named ${PORTHOLE_PORT_NAME}`) || m.includes(`has not opened port ${PORTHOLE_PORT_NAME}`);
}

/**
 * Connect to a target's agent. `qga:/path` is a qemu-guest-agent chardev socket; `libvirt:[URI/]DOMAIN`
 * is Porthole's agent when the domain has its channel and an agent answers there, else the domain's
 * qemu-guest-agent channel; every other target is Porthole's agent (`routed`: the way to it, as for
 * PortholeClient.connect). qemu-guest-agent is always reached directly: the daemon relays only Porthole's protocol.
 */
export async function connectGuest(target: string, options: ConnectOptions = {}, routed?: RoutedConnector): Promise<Guest> {
  const timeoutMs = options.timeoutMs ?? 30000;
  if (target.startsWith('qga:')) return QgaGuest.connect(target, target.slice(4), timeoutMs);
  try {
    return await PortholeClient.connect(target, options, routed);
  } catch (err) {
    if (!target.startsWith('libvirt:') || !noPortholeAgent(err)) throw err;
    const t = parseLibvirtTarget(target.slice('libvirt:'.length));
    const virsh = new Virsh({ uri: t.uri });
    // Only a qemu-guest-agent the guest has opened can answer; otherwise Porthole's cause is the one to report.
    const qga = await locateChannel(virsh, t.domain, QGA_PORT_NAME).catch(() => undefined);
    if (!qga || qga.channel.state === 'disconnected') throw err;
    return QgaGuest.over(target, new LibvirtQga(virsh, t.domain), {
      via: 'direct', detail: `to qemu-guest-agent of libvirt:${t.domain} through libvirtd (virsh qemu-agent-command): the domain has no Porthole agent`,
    });
  }
}
