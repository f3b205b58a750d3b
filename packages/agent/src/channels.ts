import { Connector, UnixSocketConnector, VirtioSerialConnector, SerialConnector, DEFAULT_PORT_NAME } from '@porthole/transport';

/**
 * `--channel` values: virtio[:NAME] (default), virtio-path:/dev/vportNpM,
 * unix:PATH (connect), unix-listen:PATH, serial:/dev/ttyS1[@BAUD], xen.
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
    case 'xen': {
      // Loaded only when asked for: the guest side of the xenstore channel.
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const xen = require('@porthole/xenstore') as { xenstoreGuestConnector?: (o: { domid?: number }) => Connector };
      if (!xen.xenstoreGuestConnector) throw new Error('this build has no xenstore channel');
      return xen.xenstoreGuestConnector({ domid: arg ? Number(arg) : undefined });
    }
    default:
      break;
  }
  throw new Error(`bad --channel ${JSON.stringify(spec)}: use virtio[:NAME], virtio-path:DEV, unix:PATH, unix-listen:PATH, serial:DEV[@BAUD] or xen`);
}
