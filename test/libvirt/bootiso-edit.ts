import { strict as assert } from 'node:assert';
import { transformDomainXml } from '@porthole/bootiso';
import { lineDiff } from '../helpers/line-diff';

/**
 * boot-iso's edit of a test-bed domain's XML as libvirtd wrote it (live or inactive): the <os><boot dev='hd'/> line
 * goes, the https CD-ROM's lines come, and every other byte stays as libvirtd wrote it.
 */
export function checkBootIsoEdit(xml: string, what: string): void {
  const r = transformDomainXml(xml, 'https://isos.example.org:8443/debian%2012.iso');
  const { removed, added } = lineDiff(xml, r.persistentXml);
  assert.deepEqual(removed, ["    <boot dev='hd'/>"], what);
  assert.deepEqual(added, [
    "    <disk type='network' device='cdrom'>", "      <driver name='qemu' type='raw'/>", "      <source protocol='https' name='/debian 12.iso'>",
    "        <host name='isos.example.org' port='8443'/>", '      </source>', "      <target dev='hda' bus='ide'/>", '      <readonly/>',
    "      <boot order='1'/>", '    </disk>',
  ], `${what}: hda is the first free IDE position (the drive at hdc sits at 0:1:0)`);
}
