// The libvirt half of `porthole agent install`: the channel XML it attaches and the virsh call that attaches it.
import { strict as assert } from 'node:assert';
import { findChannel, parseDomainXml } from '@porthole/libvirt';
import { attachChannelArgs, chardevSocketPath, portholeChannelXml } from '@porthole/broker';

describe('agent install: libvirt channel', () => {
  it('is a unix channel that QEMU binds at the given path, named as the agent expects', () => {
    const path = "/var/lib/libvirt/qemu/channel/target/domain-3-web'1/org.porthole.agent.0";
    const d = parseDomainXml(`<domain type='kvm' id='3'><name>web1</name><devices>${portholeChannelXml(path)}</devices></domain>`);
    const c = findChannel(d, 'org.porthole.agent.0');
    assert.ok(c);
    assert.equal(c.type, 'unix');
    assert.equal(c.sourceMode, 'bind');
    assert.equal(c.path, path);
    assert.equal(c.targetType, 'virtio');
  });

  it('is attached live, and to the definition only for a persistent domain', () => {
    assert.deepEqual(attachChannelArgs('web1', '/tmp/c.xml', false), ['attach-device', '--domain', 'web1', '--file', '/tmp/c.xml', '--live']);
    assert.deepEqual(attachChannelArgs('web1', '/tmp/c.xml', true), ['attach-device', '--domain', 'web1', '--file', '/tmp/c.xml', '--live', '--config']);
  });

  it('finds the plain-QEMU port\'s socket in query-chardev, with or without a client on it', () => {
    assert.equal(chardevSocketPath('disconnected:unix:/run/vm1/porthole-agent.sock,server=on'), '/run/vm1/porthole-agent.sock');
    assert.equal(chardevSocketPath('unix:/run/vm1/porthole-agent.sock,server=on'), '/run/vm1/porthole-agent.sock');
    assert.equal(chardevSocketPath('pty:/dev/pts/3'), undefined);
    assert.equal(chardevSocketPath(undefined), undefined);
  });
});
