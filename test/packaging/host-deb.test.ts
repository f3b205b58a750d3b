import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { Session } from '@porthole/protocol';
import { buildHostInstaller, buildInstaller, chroot, sh } from './artifacts';
import { copyRoot, makeImage } from './guest-root';
import { bootGuest, connectAgent, exec, Guest } from './guest';

// A VM stand-in inside the guest for the daemon to reach: a second agent on a Unix socket.
const STAND_IN = '/run/stand-in-vm.sock';

/**
 * The host package in a booted Debian with systemd as init: installed with dpkg as an image
 * builder would, the unit enabled by its postinst and started by systemd at boot. The guest also
 * gets the agent's package, through which the test looks inside.
 */
describe('packaging: the host .deb (porthole: broker daemon and CLI) in a booted Debian, started by systemd', function () {
  this.timeout(900_000);
  let dir: string;
  let guest: Guest | undefined;
  let session: Session | undefined;
  let hostDeb: string;

  const run = async (argv: string[]) => {
    const r = await exec(session!, argv, 120_000);
    return { ...r, code: r.exit.code };
  };
  const withConsole = async <T>(what: Promise<T>): Promise<T> => {
    try {
      return await what;
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- guest console (tail) ---\n${guest?.console().slice(-3000)}`);
    }
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-host-deb-'));
    const agentDeb = await buildInstaller('deb', join(dir, 'out'));
    hostDeb = await buildHostInstaller(join(dir, 'out'));
    const root = await copyRoot(join(dir, 'root'));
    await sh('cp', [agentDeb, hostDeb, join(root, 'var/tmp/')]);
    await chroot(root, ['dpkg', '-i', `/var/tmp/${basename(agentDeb)}`, `/var/tmp/${basename(hostDeb)}`]);
    await sh('rm', [join(root, 'var/tmp', basename(agentDeb)), join(root, 'var/tmp', basename(hostDeb))]);
    await makeImage(root, join(dir, 'disk.img'));
    rmSync(root, { recursive: true, force: true });
    guest = bootGuest(join(dir, 'disk.img'), dir);
    session = await connectAgent(guest.socket, 30_000);
    await withConsole(session.ready(300_000));
  });

  after(async () => {
    session?.close();
    await guest?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('carries the executable, the unit, its options and the docs', async () => {
    const contents = await sh('dpkg-deb', ['-c', hostDeb]);
    for (const f of ['./usr/lib/porthole/broker/porthole', './usr/bin/porthole -> ../lib/porthole/broker/porthole', './usr/lib/systemd/system/porthole.service',
      './etc/default/porthole', './usr/lib/porthole/broker/node_modules/serialport/package.json', './usr/share/doc/porthole/README.md']) {
      assert.ok(contents.includes(f), `${f} missing from the .deb`);
    }
    assert.equal((await sh('dpkg-deb', ['-f', hostDeb, 'Package'])).trim(), 'porthole');
    const conffiles = await sh('sh', ['-c', `dpkg-deb --ctrl-tarfile '${hostDeb}' | tar -xO ./conffiles`]);
    assert.equal(conffiles, '/etc/default/porthole\n');
  });

  it('is enabled at install and started by systemd at boot: the socket is for root and group porthole, the token for root only', async () => {
    // The daemon (a 100 MB single executable) starts under emulation after the agent: wait for it.
    let state = '';
    for (let i = 0; i < 120 && state !== 'active'; i++) {
      state = (await run(['systemctl', 'is-active', 'porthole.service'])).stdout.trim();
      if (state !== 'active') await new Promise((r) => setTimeout(r, 1000));
    }
    assert.equal(state, 'active', (await run(['journalctl', '-u', 'porthole', '--no-pager'])).stdout);
    assert.equal((await run(['systemctl', 'is-enabled', 'porthole.service'])).stdout.trim(), 'enabled');
    let socket = { code: 1 as number | null, stdout: '' };
    for (let i = 0; i < 120 && socket.code !== 0; i++) {
      socket = await run(['stat', '-c', '%F %a %U %G', '/run/porthole/broker.sock']);
      if (socket.code !== 0) await new Promise((r) => setTimeout(r, 1000));
    }
    assert.equal(socket.stdout.trim(), 'socket 660 root porthole');
    assert.equal((await run(['stat', '-c', '%a %U', '/etc/porthole/broker.token'])).stdout.trim(), '600 root');
    assert.match((await run(['cat', '/etc/porthole/broker.token'])).stdout, /^[A-Za-z0-9_-]{43}\n$/);
    assert.equal((await run(['stat', '-c', '%a', '/var/lib/porthole/broker'])).stdout.trim(), '700');
    // systemd's own check of the unit as installed.
    const verify = await run(['systemd-analyze', 'verify', '/usr/lib/systemd/system/porthole.service']);
    assert.equal(verify.code, 0, verify.stderr);
    assert.ok(!/porthole\.service/.test(verify.stderr), verify.stderr);
  });

  it('is the way the CLI reaches a VM, and serves REST on TCP with the token made at install', async () => {
    const started = await run(['systemd-run', '--unit=stand-in-vm', '/usr/sbin/porthole-agent', '--channel', `unix-listen:${STAND_IN}`]);
    assert.equal(started.code, 0, started.stderr);
    let cli = { code: null as number | null, stdout: '', stderr: '' };
    for (let i = 0; i < 30 && cli.code !== 0; i++) {
      cli = await run(['porthole', '--verbose', '--timeout', '60', 'exec', `unix:${STAND_IN}`, '--', 'echo', 'through the daemon']);
      if (cli.code !== 0) await new Promise((r) => setTimeout(r, 1000));
    }
    assert.equal(cli.code, 0, cli.stderr);
    assert.equal(cli.stdout, 'through the daemon\n');
    assert.match(cli.stderr, /porthole: through the broker daemon at \/run\/porthole\/broker\.sock/);

    // The REST API on 127.0.0.1:8750 (/etc/default/porthole), with and without the token.
    const get = (auth: boolean) => run(['bash', '-c', `exec 3<>/dev/tcp/127.0.0.1/8750; printf 'GET /v1/health HTTP/1.1\\r\\nHost: x\\r\\n${auth ? 'Authorization: Bearer %s\\r\\n' : ''}Connection: close\\r\\n\\r\\n' ${auth ? '"$(cat /etc/porthole/broker.token)"' : ''} >&3; cat <&3`]);
    const authorized = await get(true);
    assert.match(authorized.stdout, /^HTTP\/1\.1 200 /);
    assert.match(authorized.stdout, /"version":"porthole [^"]+".*"vms":1/);
    assert.match((await get(false)).stdout, /^HTTP\/1\.1 401 /);
  });
});
