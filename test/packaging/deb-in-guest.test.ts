import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { Session, v1 } from '@porthole/protocol';
import { AGENT_VERSION, buildInstaller, chroot, sh } from './artifacts';
import { copyRoot, makeImage } from './guest-root';
import { bootGuest, connectAgent, exec, Guest, nextHello, readFile, writeFile } from './guest';

// The owner's edit made in the guest before the upgrade: exec turned off.
const EDITED_CONF = '# edited by the owner before the upgrade\n[exec]\nenabled = false\n';
const UPGRADE_VERSION = `${AGENT_VERSION}+upgrade1`;

describe('packaging: the .deb in a booted Debian guest (systemd + udev start the agent)', function () {
  this.timeout(600_000);
  let dir: string;
  let guest: Guest | undefined;
  let session: Session | undefined;
  let debs: { first: string; upgrade: string };
  let firstHello: v1.Hello;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-deb-guest-'));
    debs = {
      first: await buildInstaller('deb', join(dir, 'out'), AGENT_VERSION),
      upgrade: await buildInstaller('deb', join(dir, 'out'), UPGRADE_VERSION),
    };
    const root = await copyRoot(join(dir, 'root'));
    // Installed the way an image builder would: dpkg -i in a chroot (no systemd running there).
    await sh('cp', [debs.first, join(root, 'var/tmp/')]);
    await chroot(root, ['dpkg', '-i', `/var/tmp/${basename(debs.first)}`]);
    await sh('rm', [join(root, 'var/tmp', basename(debs.first))]);
    await makeImage(root, join(dir, 'disk.img'));
    rmSync(root, { recursive: true, force: true });
    guest = bootGuest(join(dir, 'disk.img'), dir);
    session = await connectAgent(guest.socket, 30_000);
  });

  after(async () => {
    session?.close();
    await guest?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const withConsole = async <T>(what: Promise<T>): Promise<T> => {
    try {
      return await what;
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- guest console (tail) ---\n${guest?.console().slice(-3000)}`);
    }
  };

  it('the installed package lists its files and conffile', async () => {
    const contents = await sh('dpkg-deb', ['-c', debs.first]);
    for (const f of ['./usr/lib/porthole/porthole-agent', './usr/lib/porthole/porthole-spawn', './usr/lib/porthole/porthole-agent-env', './usr/sbin/porthole-agent -> ../lib/porthole/porthole-agent',
      './usr/lib/systemd/system/porthole-agent.service', './usr/lib/udev/rules.d/60-porthole-agent.rules',
      './etc/porthole/agent.conf', './usr/lib/porthole/node_modules/serialport/package.json']) {
      assert.ok(contents.includes(f), `${f} missing from the .deb`);
    }
    const info = await sh('dpkg-deb', ['-I', debs.first]);
    assert.match(info, new RegExp(`Version: ${AGENT_VERSION.replace(/\./g, '\\.')}\\n`));
    assert.equal((await sh('dpkg-deb', ['-f', debs.first, 'Architecture'])).trim(), 'amd64');
    const conffiles = await sh('sh', ['-c', `dpkg-deb --ctrl-tarfile '${debs.first}' | tar -xO ./conffiles`]);
    assert.equal(conffiles, '/etc/porthole/agent.conf\n');
  });

  it('boots; udev and systemd start the agent, which says hello over virtio-serial', async () => {
    firstHello = await withConsole(session!.ready(300_000));
    assert.equal(firstHello.softwareVersion, `porthole-agent ${AGENT_VERSION}`);
    assert.ok(firstHello.capabilities.includes(v1.Capability.CAPABILITY_EXEC), 'exec should be on with the shipped config');
    assert.equal(firstHello.hostname, 'porthole-guest');
  });

  it('injects a file and runs commands in the guest', async () => {
    const content = Buffer.from('héllo from the host\n');
    const result = await writeFile(session!, '/root/from-host/hello.txt', content, 0o600);
    assert.equal(Number(result.size), content.length);
    const cat = await exec(session!, ['stat', '-c', '%a %U', '/root/from-host/hello.txt']);
    assert.equal(cat.stdout.trim(), '600 root');
    assert.deepEqual(await readFile(session!, '/root/from-host/hello.txt'), content);

    // Started by udev's SYSTEMD_WANTS, bound to the port's device unit, from /usr/sbin via the symlink.
    const state = await exec(session!, ['systemctl', 'show', '-p', 'ActiveState', '-p', 'BindsTo', '-p', 'ExecMainPID', 'porthole-agent.service']);
    assert.match(state.stdout, /ActiveState=active/);
    assert.match(state.stdout, /BindsTo="?dev-virtio\\+x2dports-org\.porthole\.agent\.0\.device/);
    // Commands are started by the packaged helper (a static binary), not by a fork of the agent.
    const parent = await exec(session!, ['sh', '-c', 'cat /proc/$PPID/comm']);
    assert.equal(parent.stdout.trim(), 'porthole-spawn');
    const link = await exec(session!, ['readlink', '-f', '/dev/virtio-ports/org.porthole.agent.0']);
    assert.match(link.stdout, /^\/dev\/vport\d+p\d+$/m);
    assert.equal(link.exit.code, 0);
  });

  it('upgrades over an edited config: the edit survives and takes effect', async () => {
    // The owner edits the conffile, then installs a newer package in the guest.
    await writeFile(session!, '/etc/porthole/agent.conf', Buffer.from(EDITED_CONF));
    await writeFile(session!, `/var/tmp/${basename(debs.upgrade)}`, readFileSync(debs.upgrade));
    const hello = nextHello(session!, 180_000);
    // Through systemd-run: dpkg restarts the agent, and with it everything in the agent's cgroup.
    const started = await exec(session!, ['systemd-run', '--unit=porthole-upgrade', '--collect',
      'dpkg', '-i', `/var/tmp/${basename(debs.upgrade)}`]);
    assert.equal(started.exit.code, 0, started.stderr);
    const after = await withConsole(hello);
    assert.notEqual(after.instanceId, firstHello.instanceId, 'the agent should have restarted');
    assert.ok(!after.capabilities.includes(v1.Capability.CAPABILITY_EXEC), 'exec should be off: the edited config was kept');
    assert.equal((await readFile(session!, '/etc/porthole/agent.conf')).toString(), EDITED_CONF);
    const status = (await readFile(session!, '/var/lib/dpkg/status')).toString();
    const entry = status.split('\n\n').find((p) => p.startsWith('Package: porthole-agent\n')) ?? '';
    assert.match(entry, /^Status: install ok installed$/m);
    assert.match(entry, new RegExp(`^Version: ${UPGRADE_VERSION.replace(/[.+]/g, '\\$&')}$`, 'm'));
  });
});
