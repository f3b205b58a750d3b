// The CLI's libvirt options without a libvirtd: where the URI comes from, and the target forms cp splits.
// (Against a real libvirtd: test/e2e/libvirt.test.ts.)
import { strict as assert } from 'node:assert';
import { porthole } from '../broker/guest';

describe('libvirt: the CLI\'s --connect and libvirt:URI/DOMAIN targets', function () {
  this.timeout(60_000);

  it('lists -c, --connect and the target forms in --help', async () => {
    const help = (await porthole(['--help'])).stdout.toString();
    assert.match(help.replace(/\s+/g, " "), /-c, --connect <uri> libvirt connection URI for libvirt:DOMAIN targets \(default: \$LIBVIRT_DEFAULT_URI, else qemu:\/\/\/system\)/);
    assert.match(help, /libvirt:DOMAIN or libvirt:URI\/DOMAIN/);
  });

  it('refuses a URI of another host, from --connect, LIBVIRT_DEFAULT_URI or the target, with exit code 3', async () => {
    const sentence = /^porthole: qemu\+ssh:\/\/root@kvm7\.example\.org\/system is libvirt on kvm7\.example\.org: a domain's channel is a socket on its own host, so run porthole there\n$/;
    for (const [args, env] of [
      [['--connect', 'qemu+ssh://root@kvm7.example.org/system', 'info', 'libvirt:web1'], {}],
      [['info', 'libvirt:web1'], { LIBVIRT_DEFAULT_URI: 'qemu+ssh://root@kvm7.example.org/system' }],
      // The target's own URI wins over --connect; cp finds the path after it.
      [['--connect', 'qemu:///system', 'cp', 'libvirt:qemu+ssh://root@kvm7.example.org/system/web1:/etc/motd', '-'], {}],
    ] as Array<[string[], NodeJS.ProcessEnv]>) {
      const r = await porthole(args, { env });
      assert.equal(r.code, 3, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, sentence, args.join(' '));
    }
  });
});
