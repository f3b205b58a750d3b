// porthole-agent.exe on a COM port under Wine: `--channel serial:COM7` (serialport's Windows
// binding: CreateFile, SetCommState, overlapped ReadFile/WriteFile), Wine mapping COM7 to one end
// of a socat pty pair (dosdevices/com7 -> /dev/pts/N), the Linux broker on the other end as a
// `serial:` target, as it would open a VM's emulated serial port.
import { strict as assert } from 'node:assert';
import { ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, PortholeClient } from '@porthole/broker';
import { installAgentFiles, startWindowsProgram, wine, Wine } from './wine';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const CONFIG = `
[file_write]
allow = ["C:\\\\com-test"]
[file_read]
allow = ["C:\\\\com-test"]
[exec]
enabled = true
[log]
file = "C:\\\\com-test\\\\agent.log"
`;

describe('Windows agent under Wine on a COM port (serial:COM7, a pty to Linux)', function () {
  this.timeout(600_000);
  let w: Wine;
  let socat: ChildProcess;
  let agent: ChildProcess;
  let vm: PortholeClient;

  before(async () => {
    w = await wine();
    const exe = installAgentFiles(w);
    const dir = w.linuxPath('C:\\com-test');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'agent.conf'), CONFIG);
    const [guest, host] = [join(w.prefix, 'com7-guest'), join(w.prefix, 'com7-host')];
    socat = spawn('socat', [`pty,raw,echo=0,link=${guest}`, `pty,raw,echo=0,link=${host}`], { stdio: 'ignore' });
    for (const until = Date.now() + 10_000; !(existsSync(guest) && existsSync(host)); await sleep(50)) {
      if (Date.now() > until) throw new Error('socat made no pty pair');
    }
    // Wine opens COMn through dosdevices/comn; the link must name the pty itself.
    symlinkSync(realpathSync(guest), join(w.prefix, 'dosdevices', 'com7'));
    // serialport and its Windows binding come from node_modules beside the executable, as the MSI
    // installs them (msi-under-wine.test.ts checks the MSI's files are this layout), not from $PORTHOLE_SERIALPORT_PATH.
    agent = startWindowsProgram({ ...w, env: { ...w.env, PORTHOLE_SERIALPORT_PATH: '' } },
      [exe, '--channel', 'serial:COM7@115200', '--config', 'C:\\com-test\\agent.conf'], join(w.prefix, 'com-agent.out'));
    vm = await connect(`serial:${host}@115200`, { timeoutMs: 120_000 });
    await vm.ready();
  });

  after(async () => {
    vm?.close();
    // Gone before the next test (the MSI's uninstall cannot remove an executable still running).
    if (agent && agent.exitCode === null && agent.kill()) await once(agent, 'exit');
    if (socat && socat.exitCode === null) {
      socat.kill();
      await once(socat, 'exit');
    }
  });

  it('says hello as a Windows agent on COM7', async () => {
    const info = await vm.info();
    assert.equal(info.hello?.os, 'win32');
    const log = readFileSync(w.linuxPath('C:\\com-test\\agent.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.ok(log.some((e) => e.message === 'channel open' && e.channel === 'serial:COM7'), 'no "channel open" on serial:COM7 in the log');
  });

  it('injects a file with its sha256 and reads it back through the COM port', async () => {
    const content = randomBytes(512 * 1024 + 3);
    const result = await vm.installFile(content, { path: 'C:\\com-test\\in\\payload.bin', mkdir: true }).result;
    assert.equal(result.sha256, sha256(content));
    assert.deepEqual(readFileSync(w.linuxPath('C:\\com-test\\in\\payload.bin')), content);
    const read = vm.readFile('C:\\com-test\\in\\payload.bin');
    const chunks: Buffer[] = [];
    read.data.on('data', (c: Buffer) => chunks.push(c));
    assert.equal((await read.result).sha256, sha256(content));
    assert.deepEqual(Buffer.concat(chunks), content);
  });

  it('runs a command with its output and exit code through the COM port', async () => {
    const job = vm.exec({ shell: 'echo over-com7& exit /b 5' });
    let out = '';
    job.stdout.on('data', (c: Buffer) => { out += c.toString(); });
    assert.equal((await job.exit).code, 5);
    assert.match(out, /over-com7/);
  });
});
