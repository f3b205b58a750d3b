// The MSI (npm run package:msi) installed and removed by Wine's msiexec: files in
// C:\Program Files\Porthole, the service registered (automatic start, LocalSystem, "--service"),
// started by the service control manager as the agent itself (its log says so and names the
// owner's config it read), answering the Linux broker once registered with a test channel,
// stopped, and removed with the package while the owner's config stays.
import { strict as assert } from 'node:assert';
import { ChildProcess, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect } from '@porthole/broker';
import { agentExe, freePort, startWindowsProgram, wine, Wine } from './wine';

const root = join(__dirname, '..', '..');
const KEY = 'HKLM\\System\\CurrentControlSet\\Services\\PortholeAgent';
// Wine 8 starts services with %ProgramData% = C:\users\Public (a user process sees C:\ProgramData;
// Windows gives services C:\ProgramData). The agent follows %ProgramData%, so under Wine the
// owner's config and the log live here; the log's "starting" line names the config it read.
const SERVICE_DATA = 'C:\\users\\Public\\Porthole';

const INSTALL_DIR = 'C:\\Program Files\\Porthole';

/** Every file below `dir`, relative, sorted. */
function files(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .sort();
}

async function logLine(w: Wine, pattern: RegExp, after = 0): Promise<string> {
  const log = w.linuxPath(`${SERVICE_DATA}\\agent.log`);
  for (const until = Date.now() + 120_000; ; await sleep(1000)) {
    const text = existsSync(log) ? readFileSync(log, 'utf8').slice(after) : '';
    const line = text.split('\n').find((l) => pattern.test(l));
    if (line) return line;
    if (Date.now() > until) throw new Error(`no log line ${pattern} from the service: ${existsSync(log) ? readFileSync(log, 'utf8') : 'no log'}`);
  }
}

describe('Windows MSI under Wine (msiexec, the PortholeAgent service)', function () {
  this.timeout(600_000);
  let keepalive: ChildProcess | undefined;

  after(() => keepalive?.kill());

  it('installs, runs as a service that answers the broker, and uninstalls cleanly, keeping the owner config', async () => {
    const w = await wine();
    const version = JSON.parse(readFileSync(join(root, 'packages/agent/package.json'), 'utf8')).version as string;
    const out = join(w.prefix, 'msi-build');
    execFileSync(process.execPath, [join(root, 'installers/windows/build-msi.mjs'), '--exe', agentExe(), '--out', out], { stdio: 'inherit' });
    const msi = `Z:${join(out, `porthole-agent-${version}-x64.msi`).replace(/\//g, '\\')}`;
    // Wine ends service processes when no user process is left: keep one for the test.
    keepalive = startWindowsProgram(w, ['cmd.exe', '/c', 'ping -n 600 127.0.0.1 >nul'], join(w.prefix, 'keepalive.out'));
    mkdirSync(w.linuxPath(SERVICE_DATA), { recursive: true });
    const conf = w.linuxPath(`${SERVICE_DATA}\\agent.conf`);
    const ownerConfig = '[exec]\nenabled = false\n';
    writeFileSync(conf, ownerConfig);

    // Other tests lay the agent's files out here: gone, so what is found was installed by msiexec.
    rmSync(w.linuxPath(INSTALL_DIR), { recursive: true, force: true });
    await w.run(['msiexec', '/i', msi, '/qn'], 300_000);
    // Exactly the files the other tests run the agent from (build-msi.mjs --layout), byte for byte:
    // koffi, and serialport with its Windows binding, which com-port-under-wine.test.ts opens COM7 with.
    const layout = join(w.prefix, 'msi-layout');
    execFileSync(process.execPath, [join(root, 'installers/windows/build-msi.mjs'), '--layout', layout, '--exe', agentExe()], { stdio: 'inherit' });
    const installed = w.linuxPath(INSTALL_DIR);
    assert.deepEqual(files(installed), files(layout));
    assert.ok(files(installed).includes('node_modules/@serialport/bindings-cpp/prebuilds/win32-x64/@serialport+bindings-cpp.node'));
    assert.ok(files(installed).includes('node_modules/koffi/build/koffi/win32_x64/koffi.node'));
    for (const f of files(layout)) assert.ok(readFileSync(join(installed, f)).equals(readFileSync(join(layout, f))), f);
    rmSync(layout, { recursive: true, force: true });
    const reg = (await w.run(['reg', 'query', KEY])).stdout;
    assert.match(reg, /Start\s+REG_DWORD\s+0x2/i); // automatic
    assert.match(reg, /ObjectName\s+REG_SZ\s+LocalSystem/i);
    assert.match(reg, /ImagePath\s+REG_(EXPAND_)?SZ\s+"?C:\\Program Files\\Porthole\\porthole-agent\.exe"?\s+--service/i);

    // msiexec started it: the agent answered the service control manager and read the owner's config.
    const starting = JSON.parse(await logLine(w, /"message":"starting"/)) as { config: string; configFound: boolean; channel: string };
    assert.equal(starting.config.toLowerCase(), `${SERVICE_DATA}\\agent.conf`.toLowerCase());
    assert.equal(starting.configFound, true);
    assert.equal(starting.channel, 'virtio:org.porthole.agent.0');
    await logLine(w, /running as a Windows service/);
    assert.match((await w.run(['sc', 'query', 'PortholeAgent'])).stdout, /STATE\s+:\s+4\s+RUNNING/);

    // Wine has no vioserial device: point the service at a loopback port and let the broker in.
    await w.run(['net', 'stop', 'PortholeAgent']);
    const port = await freePort();
    const logSize = readFileSync(w.linuxPath(`${SERVICE_DATA}\\agent.log`)).length;
    // Wine's sc.exe has no "config", and its service manager reads the registry only at boot:
    // the service is registered again under its name with a test channel (uninstall removes it).
    await w.run(['sc', 'delete', 'PortholeAgent']);
    await w.run(['sc', 'create', 'PortholeAgent', 'binPath=', `"C:\\Program Files\\Porthole\\porthole-agent.exe" --service --channel tcp-listen:127.0.0.1:${port}`, 'start=', 'auto']);
    await w.run(['net', 'start', 'PortholeAgent']);
    await logLine(w, /running as a Windows service/, logSize);
    const vm = await connect(`tcp:127.0.0.1:${port}`, { timeoutMs: 120_000 });
    try {
      await vm.ready();
      assert.equal((await vm.info()).hello?.os, 'win32');
      // The owner's config governs the service: exec is off.
      const refused = await vm.exec(['cmd.exe', '/c', 'exit', '0']).exit.then(() => undefined, (e: { codeName?: string }) => e);
      assert.equal(refused?.codeName, 'POLICY_DENIED');
    } finally {
      vm.close();
    }
    await w.run(['net', 'stop', 'PortholeAgent']);
    await logLine(w, /^(?=.*"message":"stopping")(?=.*"by":"service control manager")/, logSize);

    await w.run(['msiexec', '/x', msi, '/qn'], 300_000);
    assert.deepEqual(existsSync(w.linuxPath(INSTALL_DIR)) ? files(w.linuxPath(INSTALL_DIR)) : [], []);
    const after = await w.run(['reg', 'query', KEY]).then(() => 'present', () => 'gone');
    assert.equal(after, 'gone');
    assert.equal(readFileSync(conf, 'utf8'), ownerConfig);
    rmSync(w.linuxPath(SERVICE_DATA), { recursive: true, force: true });
  });
});
