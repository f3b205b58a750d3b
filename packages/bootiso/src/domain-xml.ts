import type { Element } from '@xmldom/xmldom';
import { DomainXmlError } from './errors';
import { libvirtSource, validateIsoUrl, type LibvirtSource } from './url';
import { childElements, scanXml, type ScannedXml } from './xml-scan';

export type CdromBus = 'sata' | 'ide' | 'scsi';

export interface TransformOptions {
  /** Return the run-once form as `xml` (both forms are always in the result). */
  runOnce?: boolean;
  /** Target device name for the new CD-ROM (e.g. "sdc", "hdc"); chosen automatically when absent. */
  targetDev?: string;
  /** Bus for the new CD-ROM; default: the bus existing CD-ROMs use, else sata. */
  bus?: CdromBus;
  /** Write `<ssl verify="no"/>`: QEMU then boots from a server whose certificate does not verify. */
  insecure?: boolean;
}

export interface BootOrderChange {
  /** Which device, e.g. "disk vda", "interface 52:54:00:12:34:56", "hostdev". */
  device: string;
  /** Its order before (null: it had none, e.g. it came from an `<os><boot dev>` entry). */
  from: number | null;
  to: number;
}

export interface TransformResult {
  /** The form asked for: run-once when options.runOnce, else persistent. */
  xml: string;
  mode: 'persistent' | 'run-once';
  /** For `virsh define`: the CD-ROM stays until removed. */
  persistentXml: string;
  /** For `virsh create` (one transient start): same devices plus a porthole metadata marker. */
  runOnceXml: string;
  targetDev: string;
  bus: CdromBus;
  /** How the URL is written in `<source>` and the URL libvirt will give QEMU. */
  source: LibvirtSource;
  bootOrder: BootOrderChange[];
  /** The `<os><boot dev>` entries that were converted into per-device orders. */
  convertedOsBootDevs: string[];
  warnings: string[];
  /** How to apply the XML returned in `xml`. */
  usage: string;
}

/** Namespace of the run-once marker written into `<metadata>`. */
export const BOOTISO_METADATA_NS = 'urn:porthole:boot-iso:1';

interface Edit {
  start: number;
  end: number;
  text: string;
}

function applyEdits(text: string, edits: Edit[]): string {
  const sorted = [...edits].sort((a, b) => b.start - a.start || b.end - a.end);
  let out = text;
  for (const e of sorted) out = out.slice(0, e.start) + e.text + out.slice(e.end);
  return out;
}

function xmlAttr(value: string, quote: string): string {
  const escaped = value.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  return quote + (quote === "'" ? escaped.replace(/'/g, '&apos;') : escaped.replace(/"/g, '&quot;')) + quote;
}

/** Indentation helpers working on the original text, so inserted elements line up with their neighbours. */
class Layout {
  readonly quote: string;
  readonly unit: string;
  /** Inserted lines end like the input's lines (CRLF files stay CRLF). */
  readonly eol: string;

  constructor(
    private readonly doc: ScannedXml,
    devices: Element,
  ) {
    const rootTag = doc.text.slice(doc.spanOf(doc.root).start, doc.spanOf(doc.root).startTagEnd);
    this.quote = /=\s*"/.test(rootTag) ? '"' : "'";
    this.eol = doc.text.includes('\r\n') ? '\r\n' : '\n';
    const outer = this.indentOf(doc.spanOf(devices).start) ?? '';
    const first = childElements(devices)[0];
    const inner = first ? this.indentOf(doc.spanOf(first).start) : null;
    this.unit = inner !== null && inner.startsWith(outer) && inner.length > outer.length ? inner.slice(outer.length) : '  ';
  }

  /** The whitespace before `pos` on its line, or null when other text precedes it there. */
  indentOf(pos: number): string | null {
    const lineStart = this.doc.text.lastIndexOf('\n', pos - 1) + 1;
    const before = this.doc.text.slice(lineStart, pos);
    return /^[ \t]*$/.test(before) ? before : null;
  }

  childIndent(parent: Element): string {
    const kids = childElements(parent);
    const fromKid = kids.length ? this.indentOf(this.doc.spanOf(kids[kids.length - 1]).start) : null;
    return fromKid ?? (this.indentOf(this.doc.spanOf(parent).start) ?? '') + this.unit;
  }

  /** An edit inserting `lines` (already indented relative to the child level) as a child of `parent` after `after`. */
  insertChild(parent: Element, after: Element | null, lines: string[]): Edit {
    const span = this.doc.spanOf(parent);
    const indent = this.childIndent(parent);
    const block = lines.map((l) => this.eol + indent + l).join('');
    if (span.selfClosing) {
      const slash = this.doc.text.lastIndexOf('/', span.startTagEnd - 1);
      const closing = this.eol + (this.indentOf(span.start) ?? '') + `</${span.name}>`;
      return { start: slash, end: span.startTagEnd, text: '>' + block + closing };
    }
    const pos = after ? this.doc.spanOf(after).end : span.startTagEnd;
    return { start: pos, end: pos, text: block };
  }

  /** An edit removing an element together with its own line when it stands alone on it. */
  remove(el: Element): Edit {
    const span = this.doc.spanOf(el);
    const text = this.doc.text;
    const lineEnd = text.indexOf('\n', span.end);
    const afterOk = /^[ \t]*\r?$/.test(text.slice(span.end, lineEnd < 0 ? text.length : lineEnd));
    const newline = text.lastIndexOf('\n', span.start - 1);
    // Take the line break before the element (with its CR, if any) so no blank line is left.
    const lineStart = newline > 0 && text[newline - 1] === '\r' ? newline - 1 : newline;
    if (afterOk && newline >= 0 && this.indentOf(span.start) !== null) return { start: lineStart, end: span.end, text: '' };
    return { start: span.start, end: span.end, text: '' };
  }
}

/** Index of a libvirt disk name suffix: a=0 … z=25, aa=26 (libvirt's virDiskNameParse). */
function letterIndex(letters: string): number {
  let idx = 0;
  for (const c of letters) idx = idx * 26 + (c.charCodeAt(0) - 96);
  return idx - 1;
}

function letters(index: number): string {
  let s = '';
  for (let i = index + 1; i > 0; i = Math.floor((i - 1) / 26)) s = String.fromCharCode(97 + ((i - 1) % 26)) + s;
  return s;
}

/** The drive address libvirt derives from a target name when a disk has no `<address>` (virDomainDiskDefAssignAddress). */
function derivedAddress(bus: string, index: number): string {
  switch (bus) {
    case 'ide':
      return `${Math.floor(index / 4)}:${Math.floor((index % 4) / 2)}:0:${index % 2}`;
    case 'sata':
      return `${Math.floor(index / 6)}:0:0:${index % 6}`;
    default:
      return `${Math.floor(index / 7)}:0:0:${index % 7}`;
  }
}

function isDisk(el: Element, device: string): boolean {
  return el.nodeName === 'disk' && (el.getAttribute('device') ?? 'disk') === device;
}

function describe(el: Element): string {
  const first = (name: string) => childElements(el, name)[0];
  if (el.nodeName === 'disk') return `disk ${first('target')?.getAttribute('dev') ?? '?'}`;
  if (el.nodeName === 'interface') {
    const mac = first('mac')?.getAttribute('address');
    return `interface ${mac ?? el.getAttribute('type') ?? ''}`.trim();
  }
  const alias = first('alias')?.getAttribute('name');
  return alias ? `${el.nodeName} ${alias}` : el.nodeName;
}

const OS_BOOT_DEVICES: Record<string, (el: Element) => boolean> = {
  hd: (el) => isDisk(el, 'disk'),
  cdrom: (el) => isDisk(el, 'cdrom'),
  fd: (el) => isDisk(el, 'floppy'),
  network: (el) => el.nodeName === 'interface',
};

function chooseTarget(
  disks: Element[],
  opts: TransformOptions,
  warnings: string[],
): { dev: string; bus: CdromBus } {
  const targets = disks.map((d) => childElements(d, 'target')[0]).filter((t): t is Element => !!t);
  const used = new Set(targets.map((t) => t.getAttribute('dev')));
  if (opts.targetDev !== undefined) {
    const m = /^(hd|sd)([a-z]{1,3})$/.exec(opts.targetDev);
    if (!m) throw new DomainXmlError('BAD_TARGET', `target dev "${opts.targetDev}" must be hdX (ide) or sdX (sata/scsi)`);
    if (used.has(opts.targetDev)) {
      throw new DomainXmlError('TARGET_IN_USE', `target dev "${opts.targetDev}" is already used by another disk`);
    }
    const bus = opts.bus ?? (m[1] === 'hd' ? 'ide' : 'sata');
    if ((bus === 'ide') !== (m[1] === 'hd')) {
      throw new DomainXmlError('BAD_TARGET', `target dev "${opts.targetDev}" does not fit bus ${bus} (ide uses hdX, sata/scsi use sdX)`);
    }
    return { dev: opts.targetDev, bus };
  }
  const cdromBus = disks
    .filter((d) => isDisk(d, 'cdrom'))
    .map((d) => childElements(d, 'target')[0]?.getAttribute('bus'))
    .find((b): b is CdromBus => b === 'sata' || b === 'ide' || b === 'scsi');
  const wanted: CdromBus = opts.bus ?? cdromBus ?? 'sata';
  const pick = (bus: CdromBus): string | undefined => {
    const occupied = new Set<string>();
    for (const d of disks) {
      const t = childElements(d, 'target')[0];
      if (t?.getAttribute('bus') !== bus) continue;
      const a = childElements(d, 'address').find((x) => x.getAttribute('type') === 'drive');
      const dev = t.getAttribute('dev') ?? '';
      if (a) {
        const n = (k: string) => Number(a.getAttribute(k) ?? '0');
        occupied.add(`${n('controller')}:${n('bus')}:${n('target')}:${n('unit')}`);
      } else if (/^[hs]d[a-z]+$/.test(dev)) {
        occupied.add(derivedAddress(bus, letterIndex(dev.slice(2))));
      }
    }
    const prefix = bus === 'ide' ? 'hd' : 'sd';
    const limit = bus === 'ide' ? 4 : 26 * 27;
    for (let i = 0; i < limit; i++) {
      const dev = prefix + letters(i);
      if (!used.has(dev) && !occupied.has(derivedAddress(bus, i))) return dev;
    }
    return undefined;
  };
  const dev = pick(wanted);
  if (dev) return { dev, bus: wanted };
  if (wanted === 'ide' && opts.bus === undefined) {
    warnings.push('all four IDE positions are taken; the CD-ROM goes on the sata bus instead');
    const sata = pick('sata');
    if (sata) return { dev: sata, bus: 'sata' };
  }
  throw new DomainXmlError('NO_FREE_TARGET', `no free target on the ${wanted} bus for the CD-ROM`);
}

/**
 * Adds an https network CD-ROM with boot order 1 to a libvirt domain XML, shifts every other boot order by one
 * and converts an `<os><boot dev>` list into per-device orders. Everything else in the text stays byte-identical.
 */
export function transformDomainXml(xml: string, url: string, opts: TransformOptions = {}): TransformResult {
  const parsedUrl = validateIsoUrl(url);
  const source = libvirtSource(parsedUrl);
  const doc = scanXml(xml);
  const root = doc.root;
  if (root.nodeName !== 'domain') {
    throw new DomainXmlError('NOT_A_DOMAIN', `the root element is <${root.nodeName}>, expected a libvirt <domain>`);
  }
  const devices = childElements(root, 'devices')[0];
  if (!devices) throw new DomainXmlError('NO_DEVICES', 'the domain XML has no <devices> element');
  const os = childElements(root, 'os')[0];
  const osBoots = os ? childElements(os, 'boot') : [];
  const layout = new Layout(doc, devices);
  const q = layout.quote;
  const warnings: string[] = [];
  const edits: Edit[] = [];
  const bootOrder: BootOrderChange[] = [];

  const deviceEls = childElements(devices);
  const withOrder = deviceEls
    .map((el) => ({ el, boot: childElements(el, 'boot')[0] }))
    .filter((d): d is { el: Element; boot: Element } => !!d.boot);
  if (osBoots.length && withOrder.length) {
    throw new DomainXmlError(
      'MIXED_BOOT',
      'the domain XML has both <os><boot dev> and per-device <boot order>; libvirt rejects that, fix it first',
    );
  }
  if (os && childElements(os, 'kernel').length) {
    warnings.push('the domain boots a kernel directly (<os><kernel>); firmware boot order, and so the CD-ROM, is not used');
  }
  if (!source.exact) {
    warnings.push(`libvirt re-encodes the URL path: QEMU will request ${source.effectiveUrl}`);
  }

  // Existing per-device orders move up by one so the CD-ROM can take 1.
  for (const { el, boot } of withOrder) {
    const span = doc.spanOf(boot);
    const tag = xml.slice(span.start, span.startTagEnd);
    const m = /(\sorder\s*=\s*)(["'])([^"']*)\2/.exec(tag);
    const from = Number(boot.getAttribute('order'));
    if (!m || !Number.isInteger(from) || from < 1) {
      throw new DomainXmlError('BAD_BOOT_ORDER', `${describe(el)} has a <boot> without a valid order attribute`);
    }
    const valueAt = span.start + m.index + m[1].length + 1;
    edits.push({ start: valueAt, end: valueAt + m[3].length, text: String(from + 1) });
    bootOrder.push({ device: describe(el), from, to: from + 1 });
  }

  // An <os><boot dev> list (or, with no boot configuration at all, libvirt's implicit "hd") becomes per-device orders.
  const convertedOsBootDevs = osBoots.map((b) => b.getAttribute('dev') ?? '');
  const implicitHd = !osBoots.length && !withOrder.length;
  if (osBoots.length || implicitHd) {
    let next = 2;
    const assigned = new Set<Element>();
    for (const dev of implicitHd ? ['hd'] : convertedOsBootDevs) {
      const matches = OS_BOOT_DEVICES[dev];
      if (!matches) throw new DomainXmlError('BAD_BOOT_DEV', `<os><boot dev="${dev}"> is not one of hd, cdrom, network, fd`);
      for (const el of deviceEls.filter((d) => matches(d) && !assigned.has(d))) {
        assigned.add(el);
        const kids = childElements(el);
        edits.push(layout.insertChild(el, kids[kids.length - 1] ?? null, [`<boot order=${xmlAttr(String(next), q)}/>`]));
        bootOrder.push({ device: describe(el), from: null, to: next++ });
      }
    }
    for (const b of osBoots) edits.push(layout.remove(b));
    if (implicitHd) {
      warnings.push('the domain had no boot configuration (libvirt then boots "hd"); its disks now follow the CD-ROM in order');
    }
  }

  const disks = deviceEls.filter((el) => el.nodeName === 'disk');
  const { dev: targetDev, bus } = chooseTarget(disks, opts, warnings);
  const hostLine = `<host name=${xmlAttr(parsedUrl.host, q)} port=${xmlAttr(String(parsedUrl.port), q)}/>`;
  const u = layout.unit;
  const diskLines = [
    `<disk type=${xmlAttr('network', q)} device=${xmlAttr('cdrom', q)}>`,
    `${u}<driver name=${xmlAttr('qemu', q)} type=${xmlAttr('raw', q)}/>`,
    `${u}<source protocol=${xmlAttr('https', q)} name=${xmlAttr(source.name, q)}` +
      (source.query !== undefined ? ` query=${xmlAttr(source.query, q)}` : '') +
      '>',
    `${u}${u}${hostLine}`,
    ...(opts.insecure ? [`${u}${u}<ssl verify=${xmlAttr('no', q)}/>`] : []),
    `${u}</source>`,
    `${u}<target dev=${xmlAttr(targetDev, q)} bus=${xmlAttr(bus, q)}/>`,
    `${u}<readonly/>`,
    `${u}<boot order=${xmlAttr('1', q)}/>`,
    '</disk>',
  ];
  const anchor = [...disks].pop() ?? deviceEls.find((el) => el.nodeName === 'emulator') ?? null;
  edits.push(layout.insertChild(devices, anchor, diskLines));
  if (opts.insecure) warnings.push('certificate verification is OFF for this CD-ROM (<ssl verify="no"/>)');

  const persistentXml = applyEdits(xml, edits);
  const marker =
    `<porthole:boot-iso xmlns:porthole=${xmlAttr(BOOTISO_METADATA_NS, q)} mode=${xmlAttr('run-once', q)}` +
    ` target=${xmlAttr(targetDev, q)} url=${xmlAttr(url, q)}/>`;
  const metadata = childElements(root, 'metadata')[0];
  let markerEdit: Edit;
  if (metadata) {
    const kids = childElements(metadata);
    markerEdit = layout.insertChild(metadata, kids[kids.length - 1] ?? null, [marker]);
  } else {
    const before = childElements(root).filter((el) => ['name', 'uuid', 'title', 'description'].includes(el.nodeName));
    markerEdit = layout.insertChild(root, before[before.length - 1] ?? null, ['<metadata>', `${u}${marker}`, '</metadata>']);
  }
  const runOnceXml = applyEdits(xml, [...edits, markerEdit]);

  const mode = opts.runOnce ? 'run-once' : 'persistent';
  const usage =
    mode === 'run-once'
      ? 'Run once: with the domain shut off, start it with `virsh create FILE`. libvirt runs this definition for this ' +
        'start only and keeps the persistent definition, so the next start boots as before. Do not `virsh define` it.'
      : `Persistent: apply with \`virsh define FILE\`, then \`virsh start DOMAIN\`. The domain boots the ISO first until ` +
        `the CD-ROM (target ${targetDev}) is removed and the boot orders restored (keep the original XML for that).`;
  return {
    xml: mode === 'run-once' ? runOnceXml : persistentXml,
    mode,
    persistentXml,
    runOnceXml,
    targetDev,
    bus,
    source,
    bootOrder,
    convertedOsBootDevs,
    warnings,
    usage,
  };
}
