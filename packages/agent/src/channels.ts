import {
  Connector, UnixSocketConnector, VirtioSerialConnector, SerialConnector, DEFAULT_PORT_NAME, LoopbackTcpConnector, parseHostPort,
  WindowsPortConnector, windowsPortPath,
} from '@porthole/transport';
import { connectXenstoreGuest, DEFAULT_XENBUS_DEVICE } from '@porthole/xenstore';

/**
 * For a xenstore channel (`xen` or `xen:PATH`), the xenbus device to open, or a
 * Unix socket standing in for it (a test xenstored); undefined for other channels.
 */
export function xenbusPathOf(spec: string): string | undefined {
  if (spec === 'xen') return DEFAULT_XENBUS_DEVICE;
  return spec.startsWith('xen:') && spec.length > 4 ? spec.slice(4) : undefined;
}

/**
 * `--channel` values: virtio[:NAME] (default), virtio-path:/dev/vportNpM,
 * unix:PATH (connect), unix-listen:PATH, serial:/dev/ttyS1[@BAUD], xen[:DEV];
 * pipe:\\.\pipe\NAME and pipe-listen: (Windows named pipes), tcp:HOST:PORT and
 * tcp-listen:HOST:PORT (loopback only, for test rigs). On Windows, virtio opens
 * \\.\Global\NAME (the vioserial driver's device) and serial: takes COM3[@BAUD].
 */
export function connectorFor(spec: string): Connector {
  const [kind, ...rest] = spec.split(':');
  const arg = rest.join(':');
  switch (kind) {
    case 'virtio':
      if (process.platform === 'win32') return new WindowsPortConnector(windowsPortPath(arg || DEFAULT_PORT_NAME));
      return new VirtioSerialConnector({ name: arg || DEFAULT_PORT_NAME });
    case 'virtio-path':
      if (process.platform === 'win32') return new WindowsPortConnector(arg);
      return new VirtioSerialConnector({ path: arg });
    case 'pipe':
    case 'pipe-listen':
      if (!arg) break;
      return new UnixSocketConnector(arg, { listen: kind === 'pipe-listen' });
    case 'tcp':
    case 'tcp-listen': {
      if (!arg) break;
      const { host, port } = parseHostPort(arg);
      return new LoopbackTcpConnector(host, port, { listen: kind === 'tcp-listen' });
    }
    case 'unix':
      if (!arg) break;
      return new UnixSocketConnector(arg);
    case 'unix-listen':
      if (!arg) break;
      return new UnixSocketConnector(arg, { listen: true });
    case 'serial': {
      if (!arg) break;
      const [path, baud] = arg.split('@');
      return new SerialConnector(path, { baudRate: baud ? Number(baud) : undefined });
    }
    case 'xen':
      return connectXenstoreGuest({ path: xenbusPathOf(spec) });
    default:
      break;
  }
  throw new Error(`bad --channel ${JSON.stringify(spec)}: use virtio[:NAME], virtio-path:DEV, unix:PATH, unix-listen:PATH, pipe[-listen]:PIPE, tcp[-listen]:HOST:PORT, serial:DEV[@BAUD] or xen[:DEV]`);
}
