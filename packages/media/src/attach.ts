// Attaching payload media: libvirt domain XML, QEMU command-line arguments,
// and inserting/ejecting on a running VM over QMP.
import { DOMParser, XMLSerializer, Element as XmlElement, Document as XmlDocument } from '@xmldom/xmldom';
import { Availability, MediumKind } from './manifest';

/** libvirt user alias of the payload disk ("ua-" is libvirt's prefix for user-chosen aliases). */
export const PAYLOAD_DISK_ALIAS = 'ua-porthole-payload';
/** QEMU drive id used by qemuPayloadArgs; the device gets this id plus "-dev". */
export const PAYLOAD_DRIVE_ID = 'porthole-payload';
/** Namespace of the <metadata> element recording which payload is attached and how. */
export const PAYLOAD_XML_NAMESPACE = 'https://porthole.dev/xmlns/payload/1';

export class PayloadAttachError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PayloadAttachError';
  }
}

// ---------------------------------------------------------------- libvirt

function parseXml(xml: string): XmlDocument {
  let doc: XmlDocument;
  try {
    doc = new DOMParser({
      onError: (level, message) => {
        // xmldom recovers from "error"s silently; a domain definition must be exact, so they stop parsing.
        if (level !== 'warning') throw new Error(message);
      },
    }).parseFromString(xml, 'text/xml');
  } catch (e) {
    throw new PayloadAttachError(`domain XML is not well-formed: ${(e as Error).message.split('\n')[0]}`);
  }
  const root = doc.documentElement;
  if (!root || root.tagName !== 'domain') throw new PayloadAttachError(`domain XML must have a <domain> root element, got <${root?.tagName ?? 'nothing'}>`);
  return doc;
}

function children(parent: XmlElement, tag: string): XmlElement[] {
  const out: XmlElement[] = [];
  for (let n = parent.firstChild; n; n = n.nextSibling) if (n.nodeType === 1 && (n as XmlElement).tagName === tag) out.push(n as XmlElement);
  return out;
}

function child(parent: XmlElement, tag: string): XmlElement | undefined {
  return children(parent, tag)[0];
}

function isPayloadDisk(disk: XmlElement): boolean {
  return child(disk, 'alias')?.getAttribute('name') === PAYLOAD_DISK_ALIAS;
}

/** Inserts `el` after the last existing `tag` child (or at the end), with the siblings' indentation. */
function insertChild(parent: XmlElement, el: XmlElement, tag: string, indent: string): void {
  const doc = parent.ownerDocument!;
  const last = children(parent, tag).pop();
  const ref = last ? last.nextSibling : parent.lastChild;
  parent.insertBefore(doc.createTextNode(`\n${indent}`), ref);
  parent.insertBefore(el, ref);
}

function removeWithIndent(el: XmlElement): void {
  const prev = el.previousSibling;
  if (prev && prev.nodeType === 3 && /^\s*$/.test(prev.nodeValue ?? '')) el.parentNode!.removeChild(prev);
  el.parentNode!.removeChild(el);
}

function freeTarget(devices: XmlElement, prefix: string, ownDisk?: XmlElement): string {
  const used = new Set(
    children(devices, 'disk')
      .filter((d) => d !== ownDisk)
      .map((d) => child(d, 'target')?.getAttribute('dev') ?? ''),
  );
  for (let c = 'a'.charCodeAt(0); c <= 'z'.charCodeAt(0); c++) {
    const dev = `${prefix}${String.fromCharCode(c)}`;
    if (!used.has(dev)) return dev;
  }
  throw new PayloadAttachError(`no free ${prefix}* target left in the domain XML`);
}

/** The bus a new CD-ROM goes on: the bus of an existing CD-ROM, else SATA on q35 (which has no IDE), else IDE. */
function cdromBus(doc: XmlDocument, devices: XmlElement): string {
  for (const d of children(devices, 'disk')) {
    const bus = child(d, 'target')?.getAttribute('bus');
    if (d.getAttribute('device') === 'cdrom' && !isPayloadDisk(d) && bus) return bus;
  }
  const type = child(child(doc.documentElement!, 'os') ?? doc.documentElement!, 'type');
  return /q35/.test(type?.getAttribute('machine') ?? '') ? 'sata' : 'ide';
}

export interface DomainPayloadOptions {
  /** Absolute path of the image on the host. */
  image: string;
  medium: MediumKind;
  /** permanent: for `virsh define`; run-once: for a transient start (`virsh create`) that leaves the definition alone. */
  availability?: Availability;
  /** Bus of a new CD-ROM (default: that of an existing CD-ROM, else SATA on q35, else IDE); "scsi" can be hot-plugged. */
  bus?: 'ide' | 'sata' | 'scsi';
}

function setMetadata(doc: XmlDocument, options: DomainPayloadOptions | undefined): void {
  const domain = doc.documentElement!;
  let metadata = child(domain, 'metadata');
  if (metadata) {
    for (let n = metadata.firstChild; n; ) {
      const next = n.nextSibling;
      if (n.nodeType === 1 && (n as XmlElement).namespaceURI === PAYLOAD_XML_NAMESPACE) removeWithIndent(n as XmlElement);
      n = next;
    }
    if (!options && !metadata.getElementsByTagName('*').length) {
      removeWithIndent(metadata);
    }
  }
  if (!options) return;
  if (!metadata) {
    metadata = doc.createElement('metadata');
    metadata.appendChild(doc.createTextNode('\n  '));
    insertChild(domain, metadata, 'description', '  ');
  }
  const el = doc.createElementNS(PAYLOAD_XML_NAMESPACE, 'porthole:payload');
  el.setAttribute('image', options.image);
  el.setAttribute('medium', options.medium);
  el.setAttribute('availability', options.availability ?? 'permanent');
  insertChild(metadata, el, 'porthole:payload', '    ');
}

/**
 * Returns the domain XML with the payload disk (alias ua-porthole-payload)
 * attached: an existing payload disk is pointed at the new image, otherwise a
 * read-only CD-ROM or floppy is added on a free target. Other disks, including
 * an installer CD-ROM, are left alone. A <metadata> entry records image, medium
 * and availability so the broker can find and remove a run-once payload.
 */
export function attachPayloadToDomainXml(domainXml: string, options: DomainPayloadOptions): string {
  if (options.medium !== 'cd' && options.medium !== 'floppy') throw new PayloadAttachError(`medium must be "cd" or "floppy", got ${String(options.medium)}`);
  if (!options.image.startsWith('/')) throw new PayloadAttachError(`image path must be absolute for libvirt, got ${JSON.stringify(options.image)}`);
  const doc = parseXml(domainXml);
  const domain = doc.documentElement!;
  let devices = child(domain, 'devices');
  if (!devices) {
    devices = doc.createElement('devices');
    insertChild(domain, devices, 'devices', '  ');
  }
  const device = options.medium === 'cd' ? 'cdrom' : 'floppy';
  let disk = children(devices, 'disk').find(isPayloadDisk);
  if (disk && disk.getAttribute('device') !== device) {
    removeWithIndent(disk);
    disk = undefined;
  }
  if (!disk) {
    const bus = device === 'cdrom' ? options.bus ?? cdromBus(doc, devices) : 'fdc';
    const prefix = device === 'floppy' ? 'fd' : bus === 'ide' ? 'hd' : 'sd';
    disk = doc.createElement('disk');
    disk.setAttribute('type', 'file');
    disk.setAttribute('device', device);
    const add = (tag: string, attrs: Record<string, string>): void => {
      const el = doc.createElement(tag);
      for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
      disk!.appendChild(doc.createTextNode('\n      '));
      disk!.appendChild(el);
    };
    add('driver', { name: 'qemu', type: 'raw' });
    add('source', { file: options.image });
    add('target', { dev: freeTarget(devices, prefix), bus });
    add('readonly', {});
    add('alias', { name: PAYLOAD_DISK_ALIAS });
    disk.appendChild(doc.createTextNode('\n    '));
    insertChild(devices, disk, 'disk', '    ');
  } else {
    let source = child(disk, 'source');
    if (!source) {
      source = doc.createElement('source');
      disk.appendChild(source);
    }
    source.setAttribute('file', options.image);
  }
  setMetadata(doc, options);
  return new XMLSerializer().serializeToString(doc);
}

/** The payload disk of a domain XML alone (e.g. for `virsh attach-device`), or undefined when it has none. */
export function payloadDiskXml(domainXml: string): string | undefined {
  const devices = child(parseXml(domainXml).documentElement!, 'devices');
  const disk = devices && children(devices, 'disk').find(isPayloadDisk);
  return disk && new XMLSerializer().serializeToString(disk);
}

/** Returns the domain XML without the payload disk and its metadata entry (no change when there is none). */
export function detachPayloadFromDomainXml(domainXml: string): string {
  const doc = parseXml(domainXml);
  const devices = child(doc.documentElement!, 'devices');
  if (devices) for (const d of children(devices, 'disk').filter(isPayloadDisk)) removeWithIndent(d);
  setMetadata(doc, undefined);
  return new XMLSerializer().serializeToString(doc);
}

// ---------------------------------------------------------------- QEMU command line

/** QEMU option values separate keys with commas; a literal comma is doubled. */
function qemuOptionValue(value: string): string {
  return value.replace(/,/g, ',,');
}

/**
 * QEMU arguments that attach `image` read-only as a CD-ROM (ide-cd: the IDE bus
 * on pc, AHCI on q35; with bus 'scsi', scsi-cd on a virtio-scsi controller, as
 * aarch64's virt machine needs) or a floppy, with drive id `driveId` and device id
 * `driveId-dev` so QMP can find it later. For a run-once payload pass these
 * only for the next start.
 */
export function qemuPayloadArgs(image: string, medium: MediumKind, driveId: string = PAYLOAD_DRIVE_ID, bus: 'ide' | 'scsi' = 'ide'): string[] {
  if (medium !== 'cd' && medium !== 'floppy') throw new PayloadAttachError(`medium must be "cd" or "floppy", got ${String(medium)}`);
  // Machines without IDE or a floppy controller (aarch64 virt) take a CD on a virtio-scsi controller of its own.
  if (bus === 'scsi' && medium !== 'cd') throw new PayloadAttachError('only a CD goes on a SCSI bus: a floppy needs a floppy controller (x86 machines)');
  const drive = [`if=none`, `id=${driveId}`, ...(medium === 'cd' ? ['media=cdrom'] : []), 'readonly=on', 'format=raw', `file=${qemuOptionValue(image)}`];
  const device = bus === 'scsi'
    ? ['-device', `virtio-scsi-pci,id=${driveId}-scsi`, '-device', `scsi-cd,bus=${driveId}-scsi.0,drive=${driveId},id=${driveId}-dev`]
    : ['-device', `${medium === 'cd' ? 'ide-cd' : 'floppy'},drive=${driveId},id=${driveId}-dev`];
  return ['-drive', drive.join(','), ...device];
}

// ---------------------------------------------------------------- QMP

/** What the QMP functions need (connectQmpSocket gives one). Errors reject. */
export interface QmpExecutor {
  // The QMP return value's shape depends on the command.
  execute(command: string, args?: Record<string, unknown>): Promise<any>;
}

/** The part of a query-block entry used here. */
export interface BlockInfo {
  device: string;
  qdev?: string;
  removable: boolean;
  locked?: boolean;
  tray_open?: boolean;
  inserted?: { file: string; ro: boolean; drv: string };
}

export interface QmpPayloadOptions {
  medium: MediumKind;
  /** Block device name or qdev id/QOM path of the drive; by default the drive named porthole-payload, else the only empty drive of the medium's kind. */
  device?: string;
}

function kindOf(b: BlockInfo): MediumKind | undefined {
  if (!b.removable) return undefined;
  // Of QEMU's removable devices only CD-ROMs have a tray.
  return 'tray_open' in b ? 'cd' : 'floppy';
}

function describeDrives(blocks: BlockInfo[]): string {
  return blocks.map((b) => `${b.device || b.qdev}(${kindOf(b) ?? 'fixed'}${b.inserted ? ', holds a medium' : ', empty'})`).join(', ') || 'none';
}

/**
 * Chooses the drive for a payload: the one named by options.device, else the
 * drive porthole-payload, else the first empty removable drive of the kind. A
 * drive that holds someone else's medium is only used when named explicitly.
 */
export async function findPayloadDrive(qmp: QmpExecutor, options: QmpPayloadOptions): Promise<BlockInfo> {
  const blocks = (await qmp.execute('query-block')) as BlockInfo[];
  if (!Array.isArray(blocks)) throw new PayloadAttachError('query-block returned no list of drives');
  const want = options.medium === 'cd' ? 'CD-ROM' : 'floppy';
  if (options.device !== undefined) {
    const b = blocks.find((x) => x.device === options.device || x.qdev === options.device);
    if (!b) throw new PayloadAttachError(`no drive ${options.device} on the VM (drives: ${describeDrives(blocks)})`);
    if (kindOf(b) !== options.medium) throw new PayloadAttachError(`drive ${options.device} is not a ${want} drive (drives: ${describeDrives(blocks)})`);
    return b;
  }
  const named = blocks.find((b) => b.device === PAYLOAD_DRIVE_ID && kindOf(b) === options.medium);
  const empty = blocks.find((b) => kindOf(b) === options.medium && !b.inserted);
  const found = named ?? empty;
  if (!found) {
    throw new PayloadAttachError(`no empty ${want} drive on the VM to insert the payload into (drives: ${describeDrives(blocks)}); name one explicitly or start the VM with one`);
  }
  return found;
}

/** blockdev-change-medium and eject address the device by qdev id or QOM path when QEMU reports one. */
function driveRef(b: BlockInfo): Record<string, string> {
  return b.qdev ? { id: b.qdev } : { device: b.device };
}

/** Inserts `image` read-only into the payload drive of a running VM and checks that query-block shows it. */
export async function insertPayloadMedium(qmp: QmpExecutor, image: string, options: QmpPayloadOptions): Promise<BlockInfo> {
  const drive = await findPayloadDrive(qmp, options);
  await qmp.execute('blockdev-change-medium', { ...driveRef(drive), filename: image, format: 'raw', 'read-only-mode': 'read-only' });
  const after = ((await qmp.execute('query-block')) as BlockInfo[]).find((b) => b.device === drive.device && b.qdev === drive.qdev);
  if (after?.inserted?.file !== image) {
    throw new PayloadAttachError(`after inserting, drive ${drive.device || drive.qdev} holds ${after?.inserted?.file ?? 'nothing'} instead of ${image}`);
  }
  return after;
}

/**
 * Ejects the medium from the payload drive. Without force a guest that has the
 * tray locked (a mounted CD) refuses, and QEMU's error says so.
 */
export async function ejectPayloadMedium(qmp: QmpExecutor, options: QmpPayloadOptions & { force?: boolean }): Promise<BlockInfo> {
  let drive: BlockInfo | undefined;
  if (options.device !== undefined) drive = await findPayloadDrive(qmp, options);
  else {
    const blocks = (await qmp.execute('query-block')) as BlockInfo[];
    const holding = blocks.filter((b) => kindOf(b) === options.medium && b.inserted);
    // Unnamed, only an unambiguous drive is ejected: never guess between an installer CD and a payload.
    drive = blocks.find((b) => b.device === PAYLOAD_DRIVE_ID && kindOf(b) === options.medium) ?? (holding.length === 1 ? holding[0] : undefined);
    if (!drive) {
      throw new PayloadAttachError(
        `${holding.length > 1 ? 'several' : 'no'} ${options.medium === 'cd' ? 'CD-ROM' : 'floppy'} drives with a medium; name the one to eject (drives: ${describeDrives(blocks)})`,
      );
    }
  }
  await qmp.execute('eject', { ...driveRef(drive), force: options.force ?? false });
  return drive;
}
