import { strict as assert } from 'node:assert';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_VERSION, buildInstaller, chroot, sh } from './artifacts';
import { copyRoot } from './guest-root';

describe('packaging: the tarball and install.sh (in a Debian root, chrooted)', function () {
  this.timeout(600_000);
  let dir: string;
  let root: string;
  const unpacked = `/var/tmp/porthole-agent-${AGENT_VERSION}-linux-x64`;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-tar-test-'));
    const tarball = await buildInstaller('tar', join(dir, 'out'));
    root = await copyRoot(join(dir, 'root'));
    await sh('tar', ['-xzf', tarball, '-C', join(root, 'var/tmp')]);
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  it('installs; the agent runs on a stock Debian with its config in place', async () => {
    const out = await chroot(root, [`${unpacked}/install.sh`]);
    assert.match(out, new RegExp(`installed porthole-agent ${AGENT_VERSION.replace(/\./g, '\\.')}`));
    const check = await chroot(root, ['porthole-agent', '--check-config']);
    assert.match(check, /effective policy \(\/etc\/porthole\/agent\.conf\)/);

    for (const f of ['usr/lib/porthole/porthole-spawn', 'usr/lib/porthole/porthole-agent-env', 'usr/lib/systemd/system/porthole-agent.service', 'usr/lib/udev/rules.d/60-porthole-agent.rules', 'usr/lib/porthole/node_modules/serialport/package.json', 'usr/lib/porthole/node_modules/@node-rs/crc32/package.json']) {
      assert.ok(existsSync(join(root, f)), `${f} not installed`);
    }
    const started = await chroot(root, ['sh', '-c', 'mount -t proc proc /proc && { timeout 3 porthole-agent --channel unix:/nonexistent.sock 2>&1; porthole-agent --check-config; umount /proc; }; true']);
    assert.match(started, /"message":"starting"/);
    // The installed single executable finds the native CRC32C beside it (it locates itself through /proc, as on a booted system).
    assert.match(started, /^crc32c: SSE4\.2 via @node-rs\/crc32 /m);
    assert.match(started, /commands start through porthole-spawn \(\/usr\/lib\/porthole\/porthole-spawn\)/);
  });

  it('a reinstall keeps the owner\'s edited config and puts the new default beside it', async () => {
    const conf = join(root, 'etc/porthole/agent.conf');
    const edited = '# mine\n[exec]\nenabled = false\n';
    writeFileSync(conf, edited);
    const out = await chroot(root, [`${unpacked}/install.sh`]);
    assert.match(out, /kept your \/etc\/porthole\/agent\.conf/);
    assert.equal(readFileSync(conf, 'utf8'), edited);
    assert.equal(readFileSync(`${conf}.new`, 'utf8'), readFileSync(join(root, unpacked, 'files/etc/porthole/agent.conf'), 'utf8'));
    assert.match(await chroot(root, ['porthole-agent', '--check-config']), /exec: +OFF/);
  });

  it('uninstalls, and --purge removes the config and state', async () => {
    await chroot(root, [`${unpacked}/install.sh`, '--uninstall', '--purge']);
    for (const f of ['usr/sbin/porthole-agent', 'usr/lib/porthole', 'usr/lib/systemd/system/porthole-agent.service', 'etc/porthole', 'var/lib/porthole']) {
      assert.ok(!existsSync(join(root, f)), `${f} still there after --uninstall --purge`);
    }
  });
});
