// The MSI (npm run package:msi) installed and removed by Wine's msiexec: files in
// C:\Program Files\Porthole, the service registered (automatic start, LocalSystem), started by
// the service control manager as the agent itself (its log says so), stopped, and removed with
// the package while the owner's config stays.
import { strict as assert } from 'node:assert';
import { ChildProcess, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { agentExe, startWindowsProgram, wine } from './wine';

const root = join(__dirname, '..', '..');
const KEY = 'HKLM\\System\\CurrentControlSet\\Services\\PortholeAgent';

describe('Windows MSI under Wine (msiexec, the PortholeAgent service)', function () {
  this.timeout(600_000);
  let keepalive: ChildProcess | undefined;

  after(() => keepalive?.kill());

  it('installs, runs as a service, and uninstalls cleanly, keeping the owner config', async () => {
    const w = await wine();
    const version = JSON.parse(readFileSync(join(root, 'packages/agent/package.json'), 'utf8')).version as string;
    const out = join(w.prefix, 'msi-build');
    execFileSync(process.execPath, [join(root, 'installers/windows/build-msi.mjs'), '--exe', agentExe(), '--out', out], { stdio: 'inherit' });
    const msi = join(out, `porthole-agent-${version}-x64.msi`);
    // System processes (services) live only while a user process does: keep one for the test.
    keepalive = startWindowsProgram(w, ['cmd.exe', '/c', 'ping -n 600 127.0.0.1 >nul'], join(w.prefix, 'keepalive.out'));
    mkdirSync(w.linuxPath('C:\\ProgramData\\Porthole'), { recursive: true });
    const conf = w.linuxPath('C:\\ProgramData\\Porthole\\agent.conf');
    writeFileSync(conf, '[exec]\nenabled = false\n');

    await w.run(['msiexec', '/i', `Z:${msi.replace(/\//g, '\\')}`, '/qn'], 300_000);
    assert.ok(existsSync(w.linuxPath('C:\\Program Files\\Porthole\\porthole-agent.exe')));
    assert.ok(existsSync(w.linuxPath('C:\\Program Files\\Porthole\\node_modules\\koffi\\build\\koffi\\win32_x64\\koffi.node')));
    const reg = (await w.run(['reg', 'query', KEY])).stdout;
    assert.match(reg, /Start\s+REG_DWORD\s+0x2/i); // automatic
    assert.match(reg, /ObjectName\s+REG_SZ\s+LocalSystem/i);
    assert.match(reg, /porthole-agent\.exe"?\s+--service/i);

    // msiexec started it: the agent answered the service control manager and read the owner's config.
    const log = w.linuxPath('C:\\ProgramData\\Porthole\\agent.log');
    for (const until = Date.now() + 120_000; !(existsSync(log) && /running as a Windows service/.test(readFileSync(log, 'utf8'))); await sleep(1000)) {
      if (Date.now() > until) throw new Error(`the service did not start: ${existsSync(log) ? readFileSync(log, 'utf8') : 'no log'}`);
    }
    await w.run(['net', 'stop', 'PortholeAgent']);

    await w.run(['msiexec', '/x', `Z:${msi.replace(/\//g, '\\')}`, '/qn'], 300_000);
    assert.equal(existsSync(w.linuxPath('C:\\Program Files\\Porthole\\porthole-agent.exe')), false);
    const after = await w.run(['reg', 'query', KEY]).then(() => 'present', () => 'gone');
    assert.equal(after, 'gone');
    assert.equal(readFileSync(conf, 'utf8'), '[exec]\nenabled = false\n');
  });
});
