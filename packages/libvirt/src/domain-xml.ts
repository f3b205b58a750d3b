// Reading libvirt domain XML (what `virsh dumpxml` prints) with a DOM parser.
import { DOMParser, type Element } from '@xmldom/xmldom';
import { LibvirtError } from './errors';

/** A <channel> of the domain (virtio-serial ports among them). */
export interface DomainChannel {
  /** Host side: "unix", "pty", "spicevmc", … */
  type: string;
  /** <source mode>: "bind" (QEMU listens) or "connect". */
  sourceMode?: string;
  /** The host socket (unix channels; in the live XML when libvirt chose it). */
  path?: string;
  /** <target type>: "virtio" for virtio-serial ports. */
  targetType?: string;
  /** The port name the guest sees (e.g. org.porthole.agent.0). */
  name?: string;
  /** Live XML: "connected" while the guest holds its end of the port open, else "disconnected". */
  state?: string;
  alias?: string;
}

export interface DomainDisk {
  /** "file", "block", "network", "volume". */
  type: string;
  /** "disk", "cdrom", "floppy", "lun". */
  device: string;
  /** <target dev>: the name virsh change-media and detach-disk take (hdc, sda, fda). */
  target?: string;
  bus?: string;
  /** Its medium: a file, block device, volume or network name; undefined for an empty drive. */
  source?: string;
  readonly: boolean;
  alias?: string;
}

export interface DomainController {
  type: string;
  model?: string;
  index?: string;
}

export interface DomainDescription {
  name: string;
  uuid?: string;
  /** The running domain's id; undefined when it is not running (its XML is then the definition). */
  id?: number;
  channels: DomainChannel[];
  disks: DomainDisk[];
  controllers: DomainController[];
}

function children(parent: Element, name: string): Element[] {
  const out: Element[] = [];
  for (let n = parent.firstChild; n; n = n.nextSibling) if (n.nodeType === 1 && n.nodeName === name) out.push(n as Element);
  return out;
}

const first = (parent: Element, name: string): Element | undefined => children(parent, name)[0];
const attr = (el: Element | undefined, name: string): string | undefined => el?.getAttribute(name) ?? undefined;
const text = (el: Element | undefined): string | undefined => el?.textContent?.trim() || undefined;

/** Parses XML with a <domain> root; anything the parser reports is an error (libvirt never writes it). */
export function parseDomainDocument(xml: string): Element {
  let root: Element | null | undefined;
  try {
    root = new DOMParser({
      onError: (level, message) => {
        if (level !== 'warning') throw new Error(message.split('\n')[0]);
      },
    }).parseFromString(xml, 'text/xml').documentElement;
  } catch (err) {
    throw new LibvirtError('failed', `the domain XML is not well-formed: ${(err as Error).message}`);
  }
  if (!root || root.nodeName !== 'domain') throw new LibvirtError('failed', `expected a libvirt <domain> document, got <${root?.nodeName ?? 'nothing'}>`);
  return root;
}

/** The parts of a domain's XML Porthole uses: name, id, channels, disks, controllers. */
export function parseDomainXml(xml: string): DomainDescription {
  const root = parseDomainDocument(xml);
  const devices = first(root, 'devices');
  const id = attr(root, 'id');
  return {
    name: text(first(root, 'name')) ?? '',
    uuid: text(first(root, 'uuid')),
    // A domain that is not running has no id (libvirt shows -1 internally, never in the XML).
    id: id !== undefined && /^\d+$/.test(id) ? Number(id) : undefined,
    channels: devices ? children(devices, 'channel').map((c) => {
      const source = first(c, 'source');
      const target = first(c, 'target');
      return {
        type: attr(c, 'type') ?? '',
        sourceMode: attr(source, 'mode'),
        path: attr(source, 'path'),
        targetType: attr(target, 'type'),
        name: attr(target, 'name'),
        state: attr(target, 'state'),
        alias: attr(first(c, 'alias'), 'name'),
      };
    }) : [],
    disks: devices ? children(devices, 'disk').map((d) => {
      const source = first(d, 'source');
      const target = first(d, 'target');
      return {
        type: attr(d, 'type') ?? 'file',
        device: attr(d, 'device') ?? 'disk',
        target: attr(target, 'dev'),
        bus: attr(target, 'bus'),
        source: attr(source, 'file') ?? attr(source, 'dev') ?? attr(source, 'volume') ?? attr(source, 'name'),
        readonly: !!first(d, 'readonly'),
        alias: attr(first(d, 'alias'), 'name'),
      };
    }) : [],
    controllers: devices ? children(devices, 'controller').map((c) => ({ type: attr(c, 'type') ?? '', model: attr(c, 'model'), index: attr(c, 'index') })) : [],
  };
}

/** The virtio-serial channel the guest sees under `name`. */
export function findChannel(domain: DomainDescription, name: string): DomainChannel | undefined {
  return domain.channels.find((c) => c.targetType === 'virtio' && c.name === name);
}
