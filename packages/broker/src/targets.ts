import { execFileSync } from 'node:child_process';
import { Connector, UnixSocketConnector, SerialConnector, LoopbackTcpConnector, parseHostPort } from '@porthole/transport';
import { connectXenstoreHost } from '@porthole/xenstore';

export const PORTHOLE_PORT_NAME = 'org.porthole.agent.0';

/** The unix socket path of a libvirt domain's Porthole channel, from `virsh dumpxml`. */
export function libvirtChannelSocket(domain: string, portName = PORTHOLE_PORT_NAME, virsh = 'virsh'): string {
  let xml: string;
  try {
    xml = execFileSync(virsh, ['dumpxml', domain], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new Error('libvirt targets need virsh (Debian package libvirt-clients)');
    throw new Error(`virsh dumpxml ${domain} failed: ${(e.stderr ?? e.message).trim()}`);
  }
  for (const m of xml.matchAll(/<channel\b[^>]*type=['"]unix['"][^>]*>([\s\S]*?)<\/channel>/g)) {
    const body = m[1];
    const name = /<target\b[^>]*name=['"]([^'"]+)['"]/.exec(body)?.[1];
    const path = /<source\b[^>]*path=['"]([^'"]+)['"]/.exec(body)?.[1];
    if (name === portName && path) return path;
  }
  throw new Error(`domain ${domain} has no unix channel named ${portName} (add <channel type="unix"><target type="virtio" name="${portName}"/></channel>)`);
}

/**
 * A VM addressed by its channel: `unix:/path` (QEMU chardev socket),
 * `libvirt:DOMAIN`, `serial:/dev/ttyX[@BAUD]`, `xen:DOMID`, `tcp:127.0.0.1:PORT`
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
      if (rest) return new UnixSocketConnector(libvirtChannelSocket(rest));
      break;
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
  throw new Error(`bad target ${JSON.stringify(target)}: use unix:/path/to/socket, libvirt:DOMAIN, serial:/dev/ttyX, xen:DOMID or tcp:127.0.0.1:PORT`);
}
