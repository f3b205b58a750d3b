import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DOMParser } from '@xmldom/xmldom';
import { DomainXmlError, InvalidUrlError, transformDomainXml, BOOTISO_METADATA_NS } from '@porthole/bootiso';

const fixture = (name: string) => readFileSync(join(__dirname, 'fixtures', name), 'utf8');
const URL_ = 'https://mirror.example.org:8443/isos/debian%2012.iso?token=a%2Fb&x=1';
const parse = (xml: string) =>
  new DOMParser({ onError: (l, m) => { throw new Error(`${l}: ${m}`); } }).parseFromString(xml, 'text/xml');

/** The new CD-ROM disk block, cut out so the rest can be compared with the input. */
const CDROM_BLOCK = /\n[ \t]*<disk type=.network. device=.cdrom.>[\s\S]*?<\/disk>/;

describe('bootiso transformDomainXml', () => {
  it('q35 domain with an <os><boot dev> list: converts it to per-device orders after the new CD-ROM, keeps everything else', () => {
    const input = fixture('q35-os-boot.xml');
    const r = transformDomainXml(input, URL_);
    assert.equal(r.mode, 'persistent');
    assert.equal(r.xml, r.persistentXml);
    assert.deepEqual(r.convertedOsBootDevs, ['cdrom', 'hd']);
    assert.deepEqual(r.bootOrder, [
      { device: 'disk sda', from: null, to: 2 },
      { device: 'disk vda', from: null, to: 3 },
      { device: 'disk vdb', from: null, to: 4 },
    ]);
    assert.equal(r.targetDev, 'sdb', 'sda is the existing sata CD-ROM at unit 0');
    assert.equal(r.bus, 'sata');
    assert.doesNotMatch(r.xml, /<boot dev=/);
    assert.match(r.xml, /<!-- system disk: keep this comment -->/);
    assert.match(r.xml, /<vendor:extra xmlns:vendor="urn:example:vendor" level='3'>unknown element kept<\/vendor:extra>/);
    // Byte-exact elsewhere: cut the CD-ROM and the inserted boot lines, restore the removed <boot dev> lines.
    const back = r.xml.replace(CDROM_BLOCK, '').replace(/\n {6}<boot order='\d'\/>/g, '');
    const expected = input.replace("\n    <boot dev='cdrom'/>\n    <boot dev='hd'/>", '');
    assert.equal(back, expected);
    // The CD-ROM comes after the last disk, at device indentation, single-quoted like the input.
    assert.ok(r.xml.includes(
      "      <address type='drive' controller='0' bus='0' target='0' unit='0'/>\n      <boot order='2'/>\n    </disk>\n" +
      "    <disk type='network' device='cdrom'>\n" +
      "      <driver name='qemu' type='raw'/>\n" +
      "      <source protocol='https' name='/isos/debian 12.iso' query='token=a%2Fb&amp;x=1'>\n" +
      "        <host name='mirror.example.org' port='8443'/>\n" +
      '      </source>\n' +
      "      <target dev='sdb' bus='sata'/>\n" +
      '      <readonly/>\n' +
      "      <boot order='1'/>\n" +
      '    </disk>\n' +
      "    <controller type='usb'",
    ));
  });

  it('keeps CRLF line endings of a CRLF file', () => {
    const lf = fixture('q35-os-boot.xml');
    const crlf = transformDomainXml(lf.replace(/\n/g, '\r\n'), URL_, { runOnce: true });
    assert.equal(crlf.xml, transformDomainXml(lf, URL_, { runOnce: true }).xml.replace(/\n/g, '\r\n'));
  });

  it('pc domain with per-device orders on a disk, an interface and a hostdev: shifts them by one', () => {
    const input = fixture('pc-boot-orders.xml');
    const r = transformDomainXml(input, 'https://10.0.0.5/boot.iso');
    assert.deepEqual(r.bootOrder, [
      { device: 'disk hda', from: 2, to: 3 },
      { device: 'interface 52:54:00:aa:bb:01', from: 1, to: 2 },
      { device: 'hostdev', from: 3, to: 4 },
    ]);
    assert.deepEqual(r.convertedOsBootDevs, []);
    // hda/hdb take IDE bus 0; the ide CD-ROM hdc has an explicit address on bus 1 unit 0; hdd is free.
    assert.equal(r.targetDev, 'hdd');
    assert.equal(r.bus, 'ide');
    const expected = input
      .replace('<target dev="hda" bus="ide"/>\n      <boot order="2"/>', '<target dev="hda" bus="ide"/>\n      <boot order="3"/>')
      .replace('<model type="e1000"/>\n      <boot order="1"/>', '<model type="e1000"/>\n      <boot order="2"/>')
      .replace('</source>\n      <boot order="3"/>', '</source>\n      <boot order="4"/>');
    assert.equal(r.xml.replace(CDROM_BLOCK, ''), expected);
    assert.ok(r.xml.startsWith('<?xml version="1.0" encoding="UTF-8"?>\n<domain type="kvm"'));
    assert.match(r.xml, /<source protocol="https" name="\/boot.iso">\n\s+<host name="10.0.0.5" port="443"\/>/);
    const orders = [...r.xml.matchAll(/<boot order="(\d+)"\/>/g)].map((m) => Number(m[1])).sort();
    assert.deepEqual(orders, [1, 2, 3, 4]);
  });

  it('produces well-formed XML whose CD-ROM carries the URL exactly (query raw, path decoded for libvirt to re-encode)', () => {
    const r = transformDomainXml(fixture('q35-os-boot.xml'), URL_);
    const doc = parse(r.xml);
    const disks = Array.from(doc.getElementsByTagName('disk'));
    const cd = disks.find((d) => d.getAttribute('type') === 'network')!;
    const source = cd.getElementsByTagName('source')[0];
    assert.equal(source.getAttribute('protocol'), 'https');
    assert.equal(source.getAttribute('name'), '/isos/debian 12.iso');
    assert.equal(source.getAttribute('query'), 'token=a%2Fb&x=1');
    assert.equal(cd.getElementsByTagName('readonly').length, 1);
    assert.equal(r.source.effectiveUrl, URL_);
    assert.equal(r.source.exact, true);
    assert.deepEqual(r.warnings, []);
  });

  it('warns when libvirt would not reproduce the path byte for byte (%2F, lower-case escapes)', () => {
    const r = transformDomainXml(fixture('minimal.xml'), 'https://h.example/a%2fb%7e.iso');
    assert.equal(r.source.exact, false);
    assert.equal(r.source.effectiveUrl, 'https://h.example:443/a/b~.iso');
    assert.ok(r.warnings.some((w) => w.includes('https://h.example:443/a/b~.iso')));
  });

  it('run-once form: same devices plus a metadata marker, with usage for virsh create', () => {
    const r = transformDomainXml(fixture('q35-os-boot.xml'), URL_, { runOnce: true });
    assert.equal(r.mode, 'run-once');
    assert.equal(r.xml, r.runOnceXml);
    assert.doesNotMatch(r.persistentXml, /porthole:boot-iso/);
    assert.match(r.usage, /virsh create/);
    const marker = parse(r.runOnceXml).getElementsByTagNameNS(BOOTISO_METADATA_NS, 'boot-iso')[0];
    assert.equal(marker.getAttribute('mode'), 'run-once');
    assert.equal(marker.getAttribute('url'), URL_);
    assert.equal(marker.parentNode?.nodeName, 'metadata');
    assert.equal(parse(r.runOnceXml).getElementsByTagName('metadata').length, 1, 'reuses the existing <metadata>');
    // Without the marker the run-once form is the persistent form.
    assert.equal(r.runOnceXml.replace(/\n\s*<porthole:boot-iso [^>]*\/>/, ''), r.persistentXml);
    const m = transformDomainXml(fixture('minimal.xml'), URL_, { runOnce: true });
    assert.match(m.xml, /<name>tiny<\/name>\n {2}<metadata>\n {4}<porthole:boot-iso xmlns:porthole='urn:porthole:boot-iso:1' mode='run-once'/);
    assert.match(transformDomainXml(fixture('minimal.xml'), URL_).usage, /virsh define/);
  });

  it('a domain with no boot configuration gets its disks ordered after the CD-ROM (libvirt default is hd)', () => {
    const r = transformDomainXml(fixture('minimal.xml'), URL_);
    assert.deepEqual(r.bootOrder, [{ device: 'disk sda', from: null, to: 2 }]);
    assert.equal(r.targetDev, 'sdb');
    assert.ok(r.warnings.some((w) => /no boot configuration/.test(w)));
    assert.match(r.xml, /<target dev='sda' bus='sata'\/>\n {6}<boot order='2'\/><\/disk>/);
  });

  const domain = (os: string, devices: string) =>
    `<domain type='kvm'>\n  <name>t</name>\n  <os>\n    <type>hvm</type>\n${os}  </os>\n  <devices>\n${devices}  </devices>\n</domain>\n`;

  it('maps network and fd boot devices in the listed order, and removes the list', () => {
    const xml = domain(
      "    <boot dev='network'/>\n    <boot dev='fd'/>\n",
      "    <disk type='file' device='floppy'>\n      <source file='/f.img'/>\n      <target dev='fda' bus='fdc'/>\n    </disk>\n" +
        "    <interface type='user'>\n      <mac address='52:54:00:00:00:01'/>\n    </interface>\n" +
        "    <interface type='user'>\n      <mac address='52:54:00:00:00:02'/>\n    </interface>\n",
    );
    const r = transformDomainXml(xml, URL_);
    assert.deepEqual(r.bootOrder.map((b) => [b.device, b.to]), [
      ['interface 52:54:00:00:00:01', 2],
      ['interface 52:54:00:00:00:02', 3],
      ['disk fda', 4],
    ]);
    assert.match(r.xml, /<os>\n {4}<type>hvm<\/type>\n {2}<\/os>/);
  });

  it('refuses XML that mixes <os><boot dev> with per-device orders, and names bad input', () => {
    const mixed = domain("    <boot dev='hd'/>\n", "    <disk type='file'>\n      <target dev='vda' bus='virtio'/>\n      <boot order='1'/>\n    </disk>\n");
    assert.throws(() => transformDomainXml(mixed, URL_), (e: unknown) => e instanceof DomainXmlError && e.code === 'MIXED_BOOT');
    assert.throws(() => transformDomainXml('<domain><devices>', URL_), (e: unknown) => e instanceof DomainXmlError && e.code === 'XML_MALFORMED');
    assert.throws(() => transformDomainXml('<network><name>x</name></network>', URL_), (e: unknown) => e instanceof DomainXmlError && e.code === 'NOT_A_DOMAIN');
    assert.throws(() => transformDomainXml('<domain><name>x</name></domain>', URL_), (e: unknown) => e instanceof DomainXmlError && e.code === 'NO_DEVICES');
    assert.throws(() => transformDomainXml(domain("    <boot dev='usb'/>\n", ''), URL_), (e: unknown) => e instanceof DomainXmlError && e.code === 'BAD_BOOT_DEV');
    assert.throws(() => transformDomainXml(fixture('minimal.xml'), 'http://h/x.iso'), (e: unknown) => e instanceof InvalidUrlError && e.code === 'INSECURE_SCHEME');
  });

  it('picks a free target: follows a scsi CD-ROM, skips names and addresses already taken', () => {
    const scsi = domain('', "    <disk type='file' device='cdrom'>\n      <target dev='sda' bus='scsi'/>\n    </disk>\n");
    const r1 = transformDomainXml(scsi, URL_);
    assert.deepEqual([r1.targetDev, r1.bus], ['sdb', 'scsi']);
    // sdb would derive sata unit 1, which sdc occupies explicitly.
    const taken = domain(
      '',
      "    <disk type='file'>\n      <target dev='sda' bus='sata'/>\n    </disk>\n" +
        "    <disk type='file'>\n      <target dev='sdc' bus='sata'/>\n      <address type='drive' controller='0' bus='0' target='0' unit='1'/>\n    </disk>\n",
    );
    assert.equal(transformDomainXml(taken, URL_).targetDev, 'sdd');
    const ideFull = domain(
      '',
      ['hda', 'hdb', 'hdc', 'hdd'].map((d) => `    <disk type='file' device='cdrom'>\n      <target dev='${d}' bus='ide'/>\n    </disk>\n`).join(''),
    );
    const r2 = transformDomainXml(ideFull, URL_);
    assert.deepEqual([r2.targetDev, r2.bus], ['sda', 'sata']);
    assert.ok(r2.warnings.some((w) => /IDE positions are taken/.test(w)));
    assert.throws(() => transformDomainXml(ideFull, URL_, { bus: 'ide' }), (e: unknown) => e instanceof DomainXmlError && e.code === 'NO_FREE_TARGET');
  });

  it('honours targetDev and insecure, and refuses a used or ill-fitting target', () => {
    const r = transformDomainXml(fixture('minimal.xml'), URL_, { targetDev: 'sdz', insecure: true });
    assert.match(r.xml, /<target dev='sdz' bus='sata'\/>/);
    assert.match(r.xml, /<host [^>]*\/>\n {8}<ssl verify='no'\/>/);
    assert.ok(r.warnings.some((w) => /verification is OFF/.test(w)));
    assert.throws(() => transformDomainXml(fixture('minimal.xml'), URL_, { targetDev: 'sda' }), (e: unknown) => e instanceof DomainXmlError && e.code === 'TARGET_IN_USE');
    assert.throws(() => transformDomainXml(fixture('minimal.xml'), URL_, { targetDev: 'hdc', bus: 'sata' }), (e: unknown) => e instanceof DomainXmlError && e.code === 'BAD_TARGET');
    assert.throws(() => transformDomainXml(fixture('minimal.xml'), URL_, { targetDev: 'vdb' }), (e: unknown) => e instanceof DomainXmlError && e.code === 'BAD_TARGET');
  });

  it('warns that a direct-kernel domain will not boot from the CD-ROM', () => {
    const r = transformDomainXml(domain('    <kernel>/boot/vmlinuz</kernel>\n', ''), URL_);
    assert.ok(r.warnings.some((w) => /boots a kernel directly/.test(w)));
    assert.match(r.xml, /<devices>\n {4}<disk type='network' device='cdrom'>/);
  });
});
