import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { transformDomainXml } from '@porthole/bootiso';

const run = promisify(execFile);
const URL_ = 'https://mirror.example.org:8443/isos/debian%2012.iso?token=a%2Fb&x=1';
// The fixture's made-up vendor element is there to prove it survives; libvirt's schema (rightly) rejects it.
const q35 = readFileSync(join(__dirname, 'fixtures', 'q35-os-boot.xml'), 'utf8').replace(/\n\s*<vendor:extra[^\n]*/, '');
const pc = readFileSync(join(__dirname, 'fixtures', 'pc-boot-orders.xml'), 'utf8');

/**
 * Real libvirt (virsh's in-process test driver): its parser and schema judge the generated XML, and its
 * create-over-defined semantics show what the run-once form does.
 */
describe('bootiso XML accepted by libvirt (virsh test driver)', function () {
  this.timeout(30_000);
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-bootiso-virsh-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  let n = 0;
  const file = (xml: string) => {
    const p = join(dir, `d${n++}.xml`);
    writeFileSync(p, xml);
    return p;
  };
  /** Runs virsh commands in one session (the test driver's state lives only as long as the process). */
  const virsh = async (...commands: string[]) => (await run('virsh', ['-q', '-c', 'test:///default', commands.join(' ; ')])).stdout;
  const fails = (p: Promise<unknown>, message: RegExp) => assert.rejects(p, (e: { stderr?: string }) => message.test(String(e.stderr)));

  it('defines the persistent forms with schema validation and keeps source, query and boot orders', async () => {
    const r = transformDomainXml(pc, URL_);
    const out = await virsh(`define --validate ${file(r.persistentXml)}`, 'dumpxml legacy-pxe');
    assert.match(out, /<source protocol='https' name='\/isos\/debian 12.iso' query='token=a%2Fb&amp;x=1'>/);
    assert.match(out, /<target dev='hdd' bus='ide'\/>\n\s+<readonly\/>\n\s+<boot order='1'\/>/);
    assert.deepEqual([...out.matchAll(/<boot order='(\d)'\/>/g)].map((m) => m[1]).sort(), ['1', '2', '3', '4']);
    const q = transformDomainXml(q35, URL_, { insecure: true });
    const out2 = await virsh(`define --validate ${file(q.persistentXml)}`, 'dumpxml debian12');
    assert.doesNotMatch(out2, /<boot dev=/);
    assert.match(out2, /<ssl verify='no'\/>/);
  });

  it('rejects what the transform refuses or avoids: mixed boot styles, a clashing drive address', async () => {
    const mixed = q35.replace("<target dev='vda' bus='virtio'/>", "<target dev='vda' bus='virtio'/>\n      <boot order='1'/>");
    await fails(virsh(`define ${file(mixed)}`), /per-device boot elements cannot be used together with os\/boot elements/);
    const taken =
      "<domain type='kvm'><name>t</name><memory>65536</memory><os><type>hvm</type></os><devices>" +
      "<disk type='file'><source file='/a'/><target dev='sda' bus='sata'/></disk>" +
      "<disk type='file'><source file='/c'/><target dev='sdc' bus='sata'/><address type='drive' controller='0' bus='0' target='0' unit='1'/></disk>" +
      '</devices></domain>';
    const r = transformDomainXml(taken, URL_);
    assert.equal(r.targetDev, 'sdd');
    await virsh(`define --validate ${file(r.persistentXml)}`);
    // The naive choice, the first unused name, collides with sdc's explicit address.
    await fails(virsh(`define ${file(r.persistentXml.replace("dev='sdd'", "dev='sdb'"))}`), /[Dd]uplicate|already in use|conflict/);
  });

  it('run-once: virsh create over the defined domain boots the CD-ROM once and keeps the persistent definition', async () => {
    const r = transformDomainXml(q35, URL_, { runOnce: true });
    const out = await virsh(
      `define ${file(q35)}`,
      `create --validate ${file(r.runOnceXml)}`,
      'dumpxml debian12 --xpath //disk/source/@protocol',
      'echo ---',
      'dumpxml --inactive debian12 --xpath //disk/source/@protocol',
      'destroy debian12',
      'echo ---',
      'dumpxml debian12 --xpath //disk/source/@protocol',
      'dominfo debian12',
    );
    const [live, inactive, after] = out.split('---');
    assert.match(live, /protocol="https"/);
    assert.doesNotMatch(inactive, /https/);
    assert.doesNotMatch(after.split('Id:')[0], /https/);
    assert.match(after, /Persistent:\s+yes/);
  });
});
