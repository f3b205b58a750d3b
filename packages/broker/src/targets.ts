import { Connector, UnixSocketConnector, SerialConnector, LoopbackTcpConnector, parseHostPort } from '@porthole/transport';
import { connectXenstoreHost } from '@porthole/xenstore';
import { LibvirtChannelConnector, parseLibvirtTarget, PORTHOLE_CHANNEL_NAME } from '@porthole/libvirt';

export const PORTHOLE_PORT_NAME = PORTHOLE_CHANNEL_NAME;

/** A target that is not written as one (a usage error, not an unreachable VM). */
export class BadTargetError extends Error {}

/**
 * A VM addressed by its channel: `unix:/path` (QEMU chardev socket),
 * `libvirt:DOMAIN` or `libvirt:URI/DOMAIN`, `serial:/dev/ttyX[@BAUD]`, `xen:DOMID`, `tcp:127.0.0.1:PORT`
 * (an agent listening on loopback, e.g. a Windows agent under Wine).
 */
export function connectorForTarget(target: string): Connector {
  const colon = target.indexOf(':');
  const kind = colon > 0 ? target.slice(0, colon) : '';
  const rest = colon > 0 ? target.slice(colon + 1) : '';
  switch (kind) {
    case 'unix':
      if (rest) return new UnixSocketConnector(rest);
      break;
    case 'libvirt':
      return new LibvirtChannelConnector(parseLibvirtTarget(rest));
    case 'serial': {
      if (!rest) break;
      const [path, baud] = rest.split('@');
      return new SerialConnector(path, { baudRate: baud ? Number(baud) : undefined });
    }
    case 'tcp': {
      if (!rest) break;
      const { host, port } = parseHostPort(rest);
      return new LoopbackTcpConnector(host, port);
    }
    case 'xen':
      // dom0's xenstored socket: $XENSTORED_PATH or /var/run/xenstored/socket.
      if (/^\d+$/.test(rest)) return connectXenstoreHost(Number(rest));
      break;
    default:
      break;
  }
  throw new BadTargetError(`bad target ${JSON.stringify(target)}: use unix:/path/to/socket, libvirt:DOMAIN, serial:/dev/ttyX, xen:DOMID or tcp:127.0.0.1:PORT`);
}
