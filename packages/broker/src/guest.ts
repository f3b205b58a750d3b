// Which agent drives a VM: Porthole's when the VM has its port, else qemu-guest-agent's.
import { locateChannel, parseLibvirtTarget, Virsh } from '@porthole/libvirt';
import { ConnectOptions, PortholeClient } from './client';
import { QGA_PORT_NAME, QgaGuest } from './qga-guest';
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
 * qemu-guest-agent channel; every other target is Porthole's agent.
 */
export async function connectGuest(target: string, options: ConnectOptions = {}): Promise<Guest> {
  const timeoutMs = options.timeoutMs ?? 30000;
  if (target.startsWith('qga:')) return QgaGuest.connect(target, target.slice(4), timeoutMs);
  try {
    return await PortholeClient.connect(target, options);
  } catch (err) {
    if (!target.startsWith('libvirt:') || !noPortholeAgent(err)) throw err;
    const t = parseLibvirtTarget(target.slice('libvirt:'.length));
    const qga = await locateChannel(new Virsh({ uri: t.uri }), t.domain, QGA_PORT_NAME).catch(() => undefined);
    if (!qga) throw err;
    return QgaGuest.connect(target, qga.channel.path, timeoutMs, {
      via: 'direct', detail: `directly to qemu-guest-agent of libvirt:${t.domain} (${qga.channel.path}): the domain has no Porthole agent`,
    });
  }
}
