import { strict as assert } from 'node:assert';
import { DOMParser, Element as XmlElement, XMLSerializer } from '@xmldom/xmldom';
import {
  attachPayloadToDomainXml,
  detachPayloadFromDomainXml,
  PAYLOAD_DISK_ALIAS,
  PAYLOAD_XML_NAMESPACE,
  PayloadAttachError,
  payloadDiskXml,
  qemuPayloadArgs,
} from '@porthole/media';

const I440FX = `<domain type='kvm'>
  <name>vm1</name>
  <memory unit='KiB'>1048576</memory>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/vm1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/isos/installer &amp; tools.iso'/>
      <target dev='hda' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='network'><source network='default'/></interface>
  </devices>
</domain>`;

const Q35 = `<domain type='kvm'><name>vm2</name><os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os><devices><disk type='file' device='disk'><target dev='sda' bus='sata'/></disk></devices></domain>`;

function parse(xml: string): XmlElement {
  return new DOMParser().parseFromString(xml, 'text/xml').documentElement as unknown as XmlElement;
}

function disks(xml: string): XmlElement[] {
  return Array.from(parse(xml).getElementsByTagName('disk')) as unknown as XmlElement[];
}

function payloadDisk(xml: string): XmlElement | undefined {
  return disks(xml).find((d) => d.getElementsByTagName('alias')[0]?.getAttribute('name') === PAYLOAD_DISK_ALIAS);
}

function attr(el: XmlElement, tag: string, name: string): string | null {
  return el.getElementsByTagName(tag)[0]?.getAttribute(name) ?? null;
}

function metadata(xml: string): XmlElement | undefined {
  return (Array.from(parse(xml).getElementsByTagNameNS(PAYLOAD_XML_NAMESPACE, 'payload')) as unknown as XmlElement[])[0];
}

describe('media: attach (libvirt XML, QEMU arguments)', () => {
  it('adds a read-only payload CD-ROM next to the installer CD, on its bus, without touching other disks', () => {
    const out = attachPayloadToDomainXml(I440FX, { image: '/var/lib/porthole/p.iso', medium: 'cd' });
    const d = payloadDisk(out)!;
    assert.ok(d, 'payload disk present');
    assert.equal(d.getAttribute('type'), 'file');
    assert.equal(d.getAttribute('device'), 'cdrom');
    assert.equal(attr(d, 'source', 'file'), '/var/lib/porthole/p.iso');
    assert.equal(attr(d, 'target', 'bus'), 'ide');
    assert.equal(attr(d, 'target', 'dev'), 'hdb', 'hda is taken by the installer CD');
    assert.equal(attr(d, 'driver', 'type'), 'raw');
    assert.equal(d.getElementsByTagName('readonly').length, 1);
    assert.equal(disks(out).length, 3);
    assert.equal(attr(disks(out)[1], 'source', 'file'), '/isos/installer & tools.iso', 'installer CD untouched');
    const m = metadata(out)!;
    assert.equal(m.getAttribute('availability'), 'permanent');
    assert.equal(m.getAttribute('medium'), 'cd');
    assert.equal(m.getAttribute('image'), '/var/lib/porthole/p.iso');
    assert.match(out, /<interface type="network"><source network="default"\/><\/interface>/);
  });

  it('replaces the image of an attached payload and records run-once; detaching restores the original disks', () => {
    const once = attachPayloadToDomainXml(I440FX, { image: '/p/one.iso', medium: 'cd' });
    const twice = attachPayloadToDomainXml(once, { image: '/p/two.iso', medium: 'cd', availability: 'run-once' });
    assert.equal(disks(twice).length, 3, 'still one payload disk');
    assert.equal(attr(payloadDisk(twice)!, 'source', 'file'), '/p/two.iso');
    assert.equal(metadata(twice)!.getAttribute('availability'), 'run-once');
    assert.equal(parse(twice).getElementsByTagNameNS(PAYLOAD_XML_NAMESPACE, 'payload').length, 1);
    const back = detachPayloadFromDomainXml(twice);
    assert.equal(payloadDisk(back), undefined);
    assert.equal(metadata(back), undefined);
    assert.equal(disks(back).length, 2);
    const original = new XMLSerializer().serializeToString(new DOMParser().parseFromString(I440FX, 'text/xml'));
    assert.equal(back, original, 'attach then detach gives the original document back');
  });

  it('uses SATA on q35 and a floppy controller for floppies, switching device kind on demand', () => {
    const cd = attachPayloadToDomainXml(Q35, { image: '/p/a.iso', medium: 'cd' });
    assert.equal(attr(payloadDisk(cd)!, 'target', 'bus'), 'sata');
    assert.equal(attr(payloadDisk(cd)!, 'target', 'dev'), 'sdb');
    const fd = attachPayloadToDomainXml(cd, { image: '/p/a.img', medium: 'floppy' });
    const d = payloadDisk(fd)!;
    assert.equal(d.getAttribute('device'), 'floppy');
    assert.equal(attr(d, 'target', 'bus'), 'fdc');
    assert.equal(attr(d, 'target', 'dev'), 'fda');
    assert.equal(disks(fd).length, 2);
    const bare = attachPayloadToDomainXml(`<domain type='qemu'><name>x</name></domain>`, { image: '/p/a.iso', medium: 'cd' });
    assert.equal(attr(payloadDisk(bare)!, 'target', 'dev'), 'hda');
  });

  it('puts a CD-ROM on the bus asked for (SCSI, to hot-plug it) and gives the payload disk alone for attach-device', () => {
    const out = attachPayloadToDomainXml(I440FX, { image: '/p/hot.iso', medium: 'cd', bus: 'scsi' });
    const d = payloadDisk(out)!;
    assert.deepEqual([attr(d, 'target', 'dev'), attr(d, 'target', 'bus')], ['sda', 'scsi']);
    const alone = parse(payloadDiskXml(out)!);
    assert.equal(alone.tagName, 'disk');
    assert.equal(attr(alone, 'source', 'file'), '/p/hot.iso');
    assert.equal(alone.getElementsByTagName('alias')[0].getAttribute('name'), PAYLOAD_DISK_ALIAS);
    assert.equal(payloadDiskXml(I440FX), undefined);
  });

  it('refuses bad input with a clear error', () => {
    assert.throws(() => attachPayloadToDomainXml('<domain><devices>', { image: '/a', medium: 'cd' }), (e: Error) => e instanceof PayloadAttachError && /not well-formed/.test(e.message));
    assert.throws(() => attachPayloadToDomainXml('<network/>', { image: '/a', medium: 'cd' }), /must have a <domain> root element, got <network>/);
    assert.throws(() => attachPayloadToDomainXml(I440FX, { image: 'rel.iso', medium: 'cd' }), /must be absolute/);
    assert.throws(() => attachPayloadToDomainXml(I440FX, { image: '/a', medium: 'tape' as never }), /"cd" or "floppy"/);
  });

  it('builds QEMU arguments with a drive id QMP can find, escaping commas', () => {
    assert.deepEqual(qemuPayloadArgs('/p/a,b.iso', 'cd'), [
      '-drive',
      'if=none,id=porthole-payload,media=cdrom,readonly=on,format=raw,file=/p/a,,b.iso',
      '-device',
      'ide-cd,drive=porthole-payload,id=porthole-payload-dev',
    ]);
    assert.deepEqual(qemuPayloadArgs('/p/f.img', 'floppy', 'pl2'), ['-drive', 'if=none,id=pl2,readonly=on,format=raw,file=/p/f.img', '-device', 'floppy,drive=pl2,id=pl2-dev']);
  });
});
