import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_VERSION, buildInstaller, buildSea, sh } from './artifacts';
import { helloFrom, helloOverSerial, listenOnce, stop } from './agent-process';

describe('packaging: the single executable', function () {
  this.timeout(240_000);
  let dir: string;
  let exe: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-sea-test-'));
    // A copy alone in a directory: no node_modules beside it or above it.
    exe = join(dir, 'porthole-agent');
    copyFileSync(await buildSea(), exe);
    await sh('chmod', ['755', exe]);
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  it('runs with no modules on disk, and reports start-up time and idle memory', async () => {
    assert.equal((await sh(exe, ['--version'], { cwd: dir })).trim(), `porthole-agent ${AGENT_VERSION}`);
    const size = statSync(exe).size;
    const sock = join(dir, 'host.sock');
    const host = listenOnce(sock);
    const { agent, session, hello, ms } = await helloFrom([exe], `unix:${sock}`, host.accepted, dir);
    try {
      assert.equal(hello.softwareVersion, `porthole-agent ${AGENT_VERSION}`);
      await new Promise((r) => setTimeout(r, 2000));
      const rssKiB = Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${agent.pid}/status`, 'utf8'))?.[1]);
      console.log(`      single executable: ${(size / 2 ** 20).toFixed(1)} MiB; cold start to hello ${ms.toFixed(0)} ms; idle RSS ${(rssKiB / 1024).toFixed(1)} MiB`);
      assert.ok(ms < 10_000, `hello took ${ms} ms`);
      assert.ok(rssKiB > 0 && rssKiB < 200 * 1024, `idle RSS ${rssKiB} KiB`);
    } finally {
      session.close();
      host.close();
      await stop(agent);
    }
  });

  it('a serial channel without serialport beside the executable fails naming the missing module', async () => {
    const agent = spawn(exe, ['--channel', `serial:${join(dir, 'no-tty')}`, '--config', join(dir, 'no-such.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    agent.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    const deadline = Date.now() + 10_000;
    while (!/serialport/.test(stderr) && agent.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    await stop(agent);
    assert.match(stderr, /serial channels need the serialport module/);
  });

  it('loads serialport from node_modules beside the installed executable (via the /usr/sbin symlink)', async () => {
    const tarball = await buildInstaller('tar', join(dir, 'out'));
    await sh('tar', ['-xzf', tarball, '-C', dir]);
    const files = join(dir, `porthole-agent-${AGENT_VERSION}-linux-x64`, 'files');
    assert.ok(existsSync(join(files, 'usr/lib/porthole/node_modules/@serialport/bindings-cpp/prebuilds/linux-x64')));
    assert.ok(!existsSync(join(files, 'usr/lib/porthole/node_modules/@serialport/bindings-cpp/prebuilds/win32-x64')), 'other platforms\' prebuilds are not shipped');
    // Through the /usr/sbin symlink: serialport is found beside the resolved executable.
    const hello = await helloOverSerial([join(files, 'usr/sbin/porthole-agent')], dir);
    assert.equal(hello.softwareVersion, `porthole-agent ${AGENT_VERSION}`);
  });
});
