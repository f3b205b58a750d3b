// The libvirt package's pure parts: connection URIs, the libvirt:[URI/]DOMAIN target form, and reading
// domain XML that libvirtd wrote (fixtures: `virsh dumpxml` of a running test-bed domain, and of it shut off).
import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  DEFAULT_LIBVIRT_URI, findChannel, LibvirtError, libvirtUri, LibvirtTargetError, parseDomainXml, parseLibvirtTarget, remoteHostOf,
  withLibvirtUri, PORTHOLE_CHANNEL_NAME,
} from '@porthole/libvirt';
import { checkBootIsoEdit } from './bootiso-edit';

const fixture = (name: string) => readFileSync(join(__dirname, 'fixtures', name), 'utf8');

describe('libvirt: URIs and targets', () => {
  it('chooses the URI as virsh does: --connect, else LIBVIRT_DEFAULT_URI, else qemu:///system', () => {
    assert.equal(DEFAULT_LIBVIRT_URI, 'qemu:///system');
    assert.equal(libvirtUri(undefined, {}), 'qemu:///system');
    assert.equal(libvirtUri(undefined, { LIBVIRT_DEFAULT_URI: 'qemu:///session' }), 'qemu:///session');
    assert.equal(libvirtUri('test:///default', { LIBVIRT_DEFAULT_URI: 'qemu:///session' }), 'test:///default');
  });

  it('tells URIs of this host from those of another', () => {
    for (const local of ['qemu:///system', 'qemu:///session', 'qemu+unix:///system?socket=/run/other/libvirt-sock', 'test:///default']) {
      assert.equal(remoteHostOf(local), undefined, local);
    }
    assert.equal(remoteHostOf('qemu+ssh://root@kvm7.example.org/system'), 'kvm7.example.org');
    assert.equal(remoteHostOf('qemu+tls://kvm7:16514/system'), 'kvm7');
  });

  it('parses libvirt:DOMAIN and libvirt:URI/DOMAIN, the domain after the last slash', () => {
    assert.deepEqual(parseLibvirtTarget('web1'), { domain: 'web1' });
    assert.deepEqual(parseLibvirtTarget('5cbaec90-75b4-452f-aae4-c7dc64ac2fc8'), { domain: '5cbaec90-75b4-452f-aae4-c7dc64ac2fc8' });
    assert.deepEqual(parseLibvirtTarget('qemu:///session/web1'), { uri: 'qemu:///session', domain: 'web1' });
    assert.deepEqual(parseLibvirtTarget('qemu+unix:///system?socket=/run/x/libvirt-sock/web1'), { uri: 'qemu+unix:///system?socket=/run/x/libvirt-sock', domain: 'web1' });
    for (const bad of ['', 'a/b', 'qemu:///web1', 'qemu:///system/']) {
      assert.throws(() => parseLibvirtTarget(bad), (e: unknown) => e instanceof LibvirtTargetError && /libvirt:qemu:\/\/\/(system|session)\/|libvirt:DOMAIN/.test((e as Error).message), bad);
    }
  });

  it('writes a --connect URI into libvirt targets that name none, and leaves other targets alone', () => {
    assert.equal(withLibvirtUri('libvirt:web1', 'qemu:///session'), 'libvirt:qemu:///session/web1');
    assert.equal(withLibvirtUri('libvirt:qemu:///system/web1', 'qemu:///session'), 'libvirt:qemu:///system/web1');
    assert.equal(withLibvirtUri('libvirt:web1', undefined), 'libvirt:web1');
    assert.equal(withLibvirtUri('unix:/run/vm1.sock', 'qemu:///session'), 'unix:/run/vm1.sock');
  });
});

describe('libvirt: domain XML as libvirtd writes it', () => {
  it('reads a running domain: id, channel sockets and their guest state, drives, controllers', () => {
    const d = parseDomainXml(fixture('testbed-live.xml'));
    assert.equal(d.name, 'porthole-tb-24561-1-a2b623');
    assert.equal(d.id, 3);
    assert.match(d.uuid ?? '', /^[0-9a-f-]{36}$/);
    const agent = findChannel(d, PORTHOLE_CHANNEL_NAME)!;
    assert.deepEqual(agent, {
      type: 'unix', sourceMode: 'bind', path: '/var/lib/libvirt/qemu/channel/target/domain-3-porthole-tb-24561-1-/org.porthole.agent.0',
      targetType: 'virtio', name: 'org.porthole.agent.0', state: 'connected', alias: 'channel0',
    });
    assert.equal(findChannel(d, 'org.qemu.guest_agent.0')?.alias, 'channel1');
    assert.equal(findChannel(d, 'org.example.none'), undefined);
    assert.deepEqual(d.disks, [{ type: 'file', device: 'cdrom', target: 'hdc', bus: 'ide', source: undefined, readonly: true, alias: 'ide0-1-0' }]);
    assert.deepEqual(d.controllers.map((c) => `${c.type}/${c.model ?? ''}`), ['scsi/virtio-scsi', 'usb/piix3-uhci', 'pci/pci-root', 'ide/', 'virtio-serial/']);
  });

  it('reads a domain that is not running: no id, and no socket path yet (libvirt chooses it at each start)', () => {
    const d = parseDomainXml(fixture('testbed-inactive.xml'));
    assert.equal(d.id, undefined);
    const agent = findChannel(d, PORTHOLE_CHANNEL_NAME)!;
    assert.equal(agent.path, undefined);
    assert.equal(agent.state, undefined);
  });

  it('boot-iso keeps XML libvirtd wrote byte-identical outside its edit', () => {
    checkBootIsoEdit(fixture('testbed-live.xml'), 'live');
    checkBootIsoEdit(fixture('testbed-inactive.xml'), 'inactive');
  });

  it('refuses what is not a well-formed <domain>, naming why', () => {
    assert.throws(() => parseDomainXml("<domain type='qemu'><name>x</name>"), (e: unknown) => e instanceof LibvirtError && /not well-formed/.test((e as Error).message));
    assert.throws(() => parseDomainXml('<network><name>default</name></network>'), /expected a libvirt <domain> document, got <network>/);
  });
});
