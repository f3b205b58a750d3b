import { Connector, UnixSocketConnector, VirtioSerialConnector, SerialConnector, DEFAULT_PORT_NAME } from '@porthole/transport';
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
 * unix:PATH (connect), unix-listen:PATH, serial:/dev/ttyS1[@BAUD], xen[:DEV].
 */
export function connectorFor(spec: string): Connector {
  const [kind, ...rest] = spec.split(':');
  const arg = rest.join(':');
  switch (kind) {
    case 'virtio':
      return new VirtioSerialConnector({ name: arg || DEFAULT_PORT_NAME });
    case 'virtio-path':
      return new VirtioSerialConnector({ path: arg });
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
  throw new Error(`bad --channel ${JSON.stringify(spec)}: use virtio[:NAME], virtio-path:DEV, unix:PATH, unix-listen:PATH, serial:DEV[@BAUD] or xen[:DEV]`);
}
