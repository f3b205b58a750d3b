// porthole-agent.exe under Wine, driven by the Linux broker over loopback TCP (the channel a
// Windows test rig uses where a VM would have virtio-serial): the real executable, Wine's
// file system, cmd.exe and processes. What Wine cannot show is listed in README (Windows guests).
import { strict as assert } from 'node:assert';
import { ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, PortholeClient } from '@porthole/broker';
import { PortholeError } from '@porthole/protocol';
import { freePort, installAgentFiles, startWindowsProgram, wine, Wine } from './wine';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const CONFIG = (execEnabled: boolean) => `
[file_write]
allow = ["C:\\\\data"]
deny = ["C:\\\\data\\\\secret"]
[file_read]
allow = ["c:\\\\DATA"]
[exec]
enabled = ${execEnabled}
[transfers]
state_dir = "C:\\\\porthole-test\\\\state"
[payload]
state_dir = "C:\\\\porthole-test\\\\payloads"
[log]
file = "C:\\\\porthole-test\\\\agent.log"
`;

async function refusal(p: Promise<unknown>): Promise<PortholeError> {
  try {
    await p;
  } catch (err) {
    return err as PortholeError;
  }
  throw new Error('expected a refusal');
}

describe('Windows agent under Wine (porthole-agent.exe, tcp channel)', function () {
  this.timeout(600_000);
  let w: Wine;
  let agent: ChildProcess;
  let vm: PortholeClient;
  let configFile: string;
  let agentOut: string;

  before(async () => {
    w = await wine();
    agentOut = join(w.prefix, 'agent.out');
    // Installed as in packages/agent/dist/, beside the Linux porthole-spawn a Windows agent must not use.
    const exe = installAgentFiles(w, 'C:\\porthole-dist');
    copyFileSync(join(__dirname, '..', '..', 'packages/agent/dist/porthole-spawn'), w.linuxPath('C:\\porthole-dist\\porthole-spawn'));
    mkdirSync(w.linuxPath('C:\\porthole-test'), { recursive: true });
    mkdirSync(w.linuxPath('C:\\data'), { recursive: true });
    configFile = w.linuxPath('C:\\porthole-test\\agent.conf');
    writeFileSync(configFile, CONFIG(true));
    const port = await freePort();
    // Wine's ReportEventW keeps no event log: it prints each event's strings on its "eventlog" debug channel.
    agent = startWindowsProgram({ ...w, env: { ...w.env, WINEDEBUG: '+eventlog' } },
      [exe, '--channel', `tcp-listen:127.0.0.1:${port}`, '--config', 'C:\\porthole-test\\agent.conf'], agentOut);
    vm = await connect(`tcp:127.0.0.1:${port}`, { timeoutMs: 120_000 });
    await vm.ready();
  });

  after(() => {
    vm?.close();
    agent?.kill();
  });

  it('says hello as a Windows agent', async () => {
    const info = await vm.info();
    assert.equal(info.hello?.os, 'win32');
    assert.equal(info.hello?.arch, 'x64');
  });

  it("starts commands with Node's child_process, never with the Linux porthole-spawn beside it", () => {
    const log = readFileSync(w.linuxPath('C:\\porthole-test\\agent.log'), 'utf8');
    assert.match(log, /"message":"commands start through Node's child_process"/);
    assert.doesNotMatch(log, /porthole-spawn/);
  });

  it('injects a file atomically and reads it back with the same sha256, under a prefix matched without regard to case', async () => {
    const content = randomBytes(3 * 1024 * 1024 + 17);
    const result = await vm.installFile(content, { path: 'C:\\data\\sub\\Payload.bin', mkdir: true }).result;
    assert.equal(result.sha256, sha256(content));
    assert.deepEqual(readFileSync(w.linuxPath('C:\\data\\sub\\Payload.bin')), content);
    // file_read.allow is "c:\DATA": the same folder to Windows.
    const read = vm.readFile('C:/DATA/sub/payload.bin');
    const chunks: Buffer[] = [];
    read.data.on('data', (c: Buffer) => chunks.push(c));
    const r = await read.result;
    assert.equal(r.sha256, sha256(content));
    assert.deepEqual(Buffer.concat(chunks), content);
    // Replacing keeps no temporary file beside it.
    await vm.installFile(Buffer.from('second'), { path: 'C:\\data\\sub\\Payload.bin' }).result;
    assert.equal(readFileSync(w.linuxPath('C:\\data\\sub\\Payload.bin'), 'utf8'), 'second');
  });

  it('refuses by policy, and refuses Windows names and POSIX metadata it cannot honour', async () => {
    const outside = await refusal(vm.installFile(Buffer.from('x'), { path: 'C:\\windows\\porthole.txt' }).result);
    assert.equal(outside.codeName, 'POLICY_DENIED');
    assert.match(outside.rule ?? '', /file_write\.allow/);
    const denied = await refusal(vm.installFile(Buffer.from('x'), { path: 'C:\\Data\\SECRET\\k.txt', mkdir: true }).result);
    assert.equal(denied.codeName, 'POLICY_DENIED');
    assert.match(denied.rule ?? '', /file_write\.deny/);
    for (const path of ['C:\\data\\NUL.txt', 'C:\\data\\trailing.', 'C:\\data\\a:stream', 'C:\\data\\..\\windows\\x', '\\\\?\\C:\\data\\x']) {
      const e = await refusal(vm.installFile(Buffer.from('x'), { path }).result);
      assert.equal(e.codeName, 'INVALID_ARGUMENT', path);
    }
    const mode = await refusal(vm.installFile(Buffer.from('x'), { path: 'C:\\data\\m.txt', mode: 0o600 }).result);
    assert.equal(mode.codeName, 'INVALID_ARGUMENT');
    assert.match(mode.message, /POSIX mode/);
    const group = await refusal(vm.installFile(Buffer.from('x'), { path: 'C:\\data\\g.txt', group: 'users' }).result);
    assert.match(group.message, /POSIX group/);
    const unc = await refusal(vm.installFile(Buffer.from('x'), { path: '\\\\server\\share\\x.txt' }).result);
    assert.equal(unc.codeName, 'POLICY_DENIED');
    assert.equal(existsSync(w.linuxPath('C:\\data\\m.txt')), false);
    const runAs = await refusal(vm.exec(['cmd.exe', '/c', 'echo'], { user: 'Administrator' }).exit);
    assert.equal(runAs.codeName, 'UNSUPPORTED');
  });

  it('runs cmd.exe command lines with live output and passes exit codes through', async () => {
    const started = Date.now();
    const job = vm.exec({ shell: 'echo first& ping -n 4 127.0.0.1 >nul& echo second& exit /b 7' });
    let firstAt = 0;
    let out = '';
    job.stdout.on('data', (c: Buffer) => { out += c.toString(); if (!firstAt && out.includes('first')) firstAt = Date.now(); });
    const exit = await job.exit;
    assert.equal(exit.code, 7);
    assert.match(out, /first\r?\n[\s\S]*second/);
    // "first" came while ping still ran (about 3 s before the end).
    assert.ok(firstAt - started < Date.now() - started - 1500, `first line at ${firstAt - started} ms of ${Date.now() - started} ms`);
    const argv = await vm.exec(['cmd.exe', '/c', 'exit', '3']).exit;
    assert.equal(argv.code, 3);
  });

  it('runs a PowerShell command line when asked (Wine ships only a stub powershell.exe)', async () => {
    // Wine's powershell.exe prints nothing and exits 0; cmd.exe would fail on this line. The
    // audit log shows the argv the agent started.
    const ps = vm.exec({ shell: 'Write-Output porthole', powershell: true });
    let out = '';
    ps.stdout.on('data', (c: Buffer) => { out += c.toString(); });
    assert.equal((await ps.exit).code, 0);
    const viaCmd = await vm.exec({ shell: 'Write-Output porthole' }).exit;
    assert.notEqual(viaCmd.code, 0);
    const log = readFileSync(w.linuxPath('C:\\porthole-test\\agent.log'), 'utf8');
    assert.match(log, /"powershell\.exe","-NoLogo","-NoProfile","-NonInteractive","-Command","Write-Output porthole"/);
    assert.ok(out === '' || /porthole/.test(out), out);
  });

  it('cancels a command with everything it started', async () => {
    const marker = w.linuxPath('C:\\data\\marker.txt');
    // cmd.exe (child) starts another cmd.exe (grandchild) that would write the marker after ping (its child).
    const job = vm.exec({ shell: 'cmd /d /c "ping -n 5 127.0.0.1 >nul & type nul > C:\\data\\marker.txt"' });
    await job.started;
    await sleep(1000);
    job.cancel();
    const exit = await job.exit;
    assert.equal(exit.cancelled, true);
    await sleep(6000);
    assert.equal(existsSync(marker), false, 'the grandchild survived the cancel and wrote the marker');
  });

  it('reloads its config when the file changes', async () => {
    writeFileSync(configFile, CONFIG(false));
    let last: PortholeError | undefined;
    for (const until = Date.now() + 30_000; Date.now() < until; await sleep(500)) {
      last = await vm.exec(['cmd.exe', '/c', 'exit', '0']).exit.then(() => undefined, (e: PortholeError) => e);
      if (last) break;
    }
    assert.equal(last?.codeName, 'POLICY_DENIED');
    assert.match(last?.rule ?? '', /exec\.enabled = false/);
    const log = readFileSync(w.linuxPath('C:\\porthole-test\\agent.log'), 'utf8');
    assert.match(log, /config reloaded/);
  });

  it('writes its start and its errors, not its other lines, to the Windows event log', async () => {
    // Events as Wine's eventlog channel prints them: information as trace, errors as err.
    const events = () => readFileSync(agentOut, 'utf8').split('\n').filter((l) => /:eventlog:ReportEventW /.test(l));
    assert.ok(events().some((l) => /^[0-9a-f]+:trace:eventlog:.*\\"message\\":\\"starting\\"/.test(l)), events().join('\n'));
    writeFileSync(configFile, '[exec]\nenabled = "not a boolean"\n');
    for (const until = Date.now() + 30_000; !events().some((l) => /:err:eventlog:.*config reload failed/.test(l)); await sleep(500)) {
      if (Date.now() > until) throw new Error(`no error event for the failed reload: ${events().join('\n')}`);
    }
    assert.equal(events().filter((l) => /config reloaded|channel open/.test(l)).length, 0, events().join('\n'));
    writeFileSync(configFile, CONFIG(false));
  });
});
