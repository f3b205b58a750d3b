// End to end in a real VM: QEMU (TCG) with a virtio-serial port, the real agent
// inside started by the guest's init, driven through the broker's API and CLI.
import { strict as assert } from 'node:assert';
import { spawn, execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { connect, PortholeClient, describeError } from '@porthole/broker';
import { bootVm, Vm, agentBundlePath, agentExecutablePath } from '@porthole/testbed';
import { PortholeError } from '@porthole/protocol';
import { liveOutput, readBack, run } from './helpers';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const repo = join(__dirname, '..', '..');
const cli = join(repo, 'packages', 'broker', 'bin', 'porthole.js');

/** The packaged single executable when it was built, else the bundle (both are the real agent). */
function agent() {
  const exe = agentExecutablePath();
  return exe ? { executable: exe } : { bundle: agentBundlePath() };
}

/** In a command's shell: the agent's pid (the shell's parent is porthole-spawn, whose parent is the agent). */
const AGENT_PID = '$(cut -d" " -f4 /proc/$PPID/stat)';

function printConsoleOnFailure(getVm: () => Vm | undefined) {
  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(getVm()?.consoleTail(60));
  });
}

describe('end to end in a real VM (QEMU TCG, virtio-serial)', function () {
  this.timeout(180000);
  let vm: Vm | undefined;
  let client: PortholeClient;

  before(async () => {
    vm = await bootVm({ agent: agent() });
    client = await connect(vm.target, { timeoutMs: 90000 });
  });
  after(async () => {
    client?.close();
    await vm?.shutdown();
  });
  printConsoleOnFailure(() => vm);

  it('handshakes: the agent inside announces its version and capabilities', async () => {
    const info = await client.info();
    assert.match(info.hello!.softwareVersion!, /^porthole-agent /);
    assert.equal(info.hello!.hostname, 'porthole-guest');
    assert.deepEqual([...info.hello!.capabilities!].sort(), [1, 2, 3, 4]);
  });

  it('injects a small file with owner, group, mode and parent directories; the read-back sha256 matches', async () => {
    const content = Buffer.from('hello from the host\n');
    const r = await client.installFile(content, { path: '/srv/app/conf/app.conf', owner: 'tester', group: 'users', mode: 0o640, mkdir: true }).result;
    assert.equal(r.sha256, sha256(content));
    const back = await readBack(client, '/srv/app/conf/app.conf');
    assert.ok(back.data.equals(content));
    assert.equal(back.sha256, sha256(content));
    assert.equal(back.mode, 0o640);
    assert.equal(back.uid, 1000);
    assert.equal(back.gid, 100);
    const stat = await run(client, ['stat', '-c', '%U:%G %a', '/srv/app/conf/app.conf']);
    assert.equal(stat.stdout.trim(), 'tester:users 640');
  });

  it('injects 64 MiB and reads it back intact', async () => {
    const big = randomBytes(64 * 1024 * 1024);
    const r = await client.installFile(big, { path: '/tmp/big.bin' }).result;
    assert.equal(r.size, big.length);
    assert.equal(r.sha256, sha256(big));
    const back = await readBack(client, '/tmp/big.bin');
    assert.equal(back.sha256, sha256(big));
    assert.equal(back.data.length, big.length);
  });

  it('keeps a non-ASCII path exact', async () => {
    const path = '/tmp/données/日本語 ✓.txt';
    await client.installFile(Buffer.from('x'), { path, mkdir: true }).result;
    // printf writes the name's bytes as they are (busybox ls would mask them).
    const ls = await run(client, { shell: 'for f in /tmp/données/*; do printf "%s" "$f"; done' });
    assert.equal(ls.stdout, path);
    assert.equal((await readBack(client, path)).data.toString(), 'x');
  });

  it('a broker killed mid-transfer leaves no partial file, and a new broker resumes the transfer', async () => {
    const data = randomBytes(48 * 1024 * 1024);
    const requestId = `e2e-resume-${Date.now()}`;
    const tmp = join(require('node:os').tmpdir(), `${requestId}.bin`);
    require('node:fs').writeFileSync(tmp, data);
    try {
      // A chardev socket takes one host client at a time: this broker steps aside for the other one.
      client.close();
      // A separate broker process, killed with SIGKILL while it is sending.
      const child = spawn(process.execPath, ['--conditions=porthole-src', '--import', 'tsx', join(__dirname, 'fixtures', 'inject-child.ts'), vm!.target, tmp, '/tmp/resumed.bin', requestId],
        { cwd: repo, stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise<void>((resolve, reject) => {
        child.stdout!.on('data', (d: Buffer) => { if (d.includes('half')) resolve(); });
        child.once('exit', (code) => reject(new Error(`broker process ended early (${code})`)));
      });
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      client = await connect(vm!.target, { timeoutMs: 30000 });
      // Nothing at the target: the partial content is only in the agent's temporary file.
      const ls = await run(client, { shell: 'test -e /tmp/resumed.bin && echo present || echo absent' });
      assert.equal(ls.stdout.trim(), 'absent');
      const r = await client.installFile({ path: tmp }, { path: '/tmp/resumed.bin', requestId }).result;
      assert.ok(r.resumedFrom > 0, `resumed from ${r.resumedFrom}`);
      assert.equal(r.sha256, sha256(data));
      assert.equal((await readBack(client, '/tmp/resumed.bin')).sha256, sha256(data));
    } finally {
      require('node:fs').rmSync(tmp, { force: true });
    }
  });

  it('passes exit codes and signals through', async () => {
    assert.equal((await run(client, ['sh', '-c', 'exit 3'])).code, 3);
    const killed = await run(client, ['sh', '-c', 'kill -TERM $$']);
    assert.equal(killed.code, null);
    assert.equal(killed.signal, 'SIGTERM');
    await assert.rejects(run(client, ['/no/such/command']), (e: PortholeError) => e.codeName === 'NOT_FOUND');
  });

  it('streams output live: the first line arrives before the command ends', async () => {
    const { atFirstOutput, all } = await liveOutput(client);
    assert.deepEqual(atFirstOutput, ['out:first'], 'first line seen while the command still runs');
    assert.deepEqual(all, ['out:first', 'out:second', 'exit']);
  });

  it('streams stdin into the command', async () => {
    const task = client.exec(['sh', '-c', 'tr a-z A-Z'], { stdin: true });
    const out: Buffer[] = [];
    task.stdout.on('data', (d: Buffer) => out.push(d));
    task.stdin.write('hello ');
    task.stdin.end('guest\n');
    assert.equal((await task.exit).code, 0);
    assert.equal(Buffer.concat(out).toString(), 'HELLO GUEST\n');
  });

  it('times out and cancels, killing the whole process group', async () => {
    const t = await client.exec(['sh', '-c', 'sleep 60 & sleep 60'], { timeoutMs: 1000 }).exit;
    assert.equal(t.timedOut, true);
    const task = client.exec(['sleep', '60']);
    await task.started;
    task.cancel();
    const c = await task.exit;
    assert.equal(c.cancelled, true);
    const left = await run(client, { shell: 'ps | grep -c "[s]leep 60" || true' });
    assert.equal(left.stdout.trim(), '0', 'no sleep left behind');
  });

  it('starts commands through porthole-spawn, the helper installed beside the agent', async () => {
    // The shell's parent is whoever started it: the helper, not the agent.
    const r = await run(client, ['sh', '-c', 'cat /proc/$PPID/comm']);
    assert.equal(r.stdout.trim(), 'porthole-spawn');
  });

  it('runs with what its launcher sets on an emulated CPU (TCG): OpenSSL\'s plain sha256, no JIT; its commands get neither', async () => {
    const own = (await run(client, ['sh', '-c', `tr '\\0' '\\n' < /proc/${AGENT_PID}/environ`])).stdout.split('\n');
    for (const setting of ['OPENSSL_ia32cap=~0x1000020000000000:~0x20000128', 'NODE_OPTIONS=--jitless', 'MALLOC_MMAP_THRESHOLD_=65536']) assert.ok(own.includes(setting), `the agent runs with ${setting}`);
    const env = (await run(client, ['env'])).stdout;
    assert.doesNotMatch(env, /^(OPENSSL_ia32cap|NODE_OPTIONS|MALLOC_MMAP_THRESHOLD_)=/m);
  });

  it('runs 20 commands at once', async () => {
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => run(client, ['sh', '-c', `echo ${i}; exit ${i % 5}`])));
    results.forEach((r, i) => {
      assert.equal(r.stdout.trim(), String(i));
      assert.equal(r.code, i % 5);
    });
  });

  it('the CLI: exec passes output and exit code through, info --json', async () => {
    client.close(); // the chardev socket takes one host client at a time
    const exec = await promisify(execFile)(process.execPath, [cli, 'exec', vm!.target, '--', 'sh', '-c', 'echo from-cli; exit 0']);
    assert.equal(exec.stdout, 'from-cli\n');
    const failed = await promisify(execFile)(process.execPath, [cli, 'exec', vm!.target, '--', 'sh', '-c', 'exit 5']).catch((e: { code: number }) => e);
    assert.equal((failed as { code: number }).code, 5);
    const json = await promisify(execFile)(process.execPath, [cli, '--json', 'info', vm!.target]);
    assert.equal(JSON.parse(json.stdout).hostname, 'porthole-guest');
    client = await connect(vm!.target, { timeoutMs: 30000 });
  });

  it('a SIGTERM stops the agent at once, by that signal, while the port waits for the host', async () => {
    const exitLines = () => vm!.console().match(/agent exited with status \d+/g) ?? [];
    const exits = exitLines().length;
    // Timed in the guest, by a process of its own session that outlives the agent: from the kill to the
    // agent's pid being gone (reaped by init), in /proc/uptime seconds. The host's view of the console
    // is no clock for this: the guest's init reports the exit seconds after it happened.
    const timer = `a=$(cut -d" " -f1 /proc/uptime); kill -TERM $0; while [ -e /proc/$0 ]; do sleep 0.05; done; echo "$a $(cut -d" " -f1 /proc/uptime)" > /tmp/agent-stop`;
    void run(client, ['sh', '-c', `setsid sh -c '${timer}' ${AGENT_PID} </dev/null >/dev/null 2>&1 &`]).catch(() => undefined);
    for (let i = 0; i < 100 && exitLines().length === exits; i++) await sleep(100);
    assert.equal(exitLines().length, exits + 1, 'the agent ended within 10 s of SIGTERM');
    assert.equal(exitLines().pop(), 'agent exited with status 143', 'ended by SIGTERM (128 + 15)');
    assert.match(vm!.console(), /^(?=.*"message":"stopping")(?=.*"signal":"SIGTERM").*$/m);
    // Until the restarted agent has greeted the broker, a request is failed as in flight (SESSION_RESET), never hung.
    for (let i = 0; ; i++) {
      const r = await run(client, ['echo', 'back']).catch((e: PortholeError) => e);
      if (!(r instanceof Error)) {
        assert.equal(r.stdout, 'back\n');
        break;
      }
      assert.equal(r.codeName, 'SESSION_RESET', r.message);
      assert.ok(i < 10, 'the restarted agent answers');
      await sleep(1000);
    }
    const stamp = await run(client, ['cat', '/tmp/agent-stop']);
    const times = /^(\d+\.\d+) (\d+\.\d+)$/.exec(stamp.stdout.trim());
    assert.ok(times, `the guest-side timer left no "start end" line in /tmp/agent-stop (${stamp.stderr.trim() || stamp.stdout.trim() || 'empty'})`);
    const [killed, gone] = [Number(times[1]), Number(times[2])];
    assert.ok(gone - killed < 2, `the agent took ${(gone - killed).toFixed(2)} s from SIGTERM to its end (guest clock)`);
  });

  it('survives the agent restarting inside the guest: in-flight work fails clearly, then the session works', async () => {
    const pending = client.exec(['sleep', '30']);
    await pending.started;
    // Kill the agent; the guest's init restarts it.
    void run(client, ['sh', '-c', `kill -9 ${AGENT_PID}`]).catch(() => undefined);
    await assert.rejects(pending.exit, (e: PortholeError) => e.codeName === 'SESSION_RESET' && /restarted|lost/.test(e.message));
    const info = await client.info();
    assert.match(info.hello!.softwareVersion!, /^porthole-agent/);
    assert.equal((await run(client, ['echo', 'back'])).stdout, 'back\n');
  });

  it('survives the broker reconnecting: a new broker connection gets a working session', async () => {
    client.close();
    client = await connect(vm!.target, { timeoutMs: 30000 });
    assert.equal((await run(client, ['echo', 'again'])).stdout, 'again\n');
  });

  it('hosts that hang up and call at once lose nothing: 30 connections in a row, each with a request', async () => {
    // The guest can read the next host's bytes before it learns the last one left (QEMU says so on another
    // queue): an agent that closed its port on that late EOF dropped the request the next host had sent.
    client.close();
    for (let i = 0; i < 30; i++) {
      const c = await connect(vm!.target, { broker: false, timeoutMs: 30000 });
      try {
        let timer: NodeJS.Timeout | undefined;
        const out = await Promise.race([
          run(c, ['echo', `call ${i}`]),
          new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`call ${i}: no answer within 20 s`)), 20_000); }),
        ]).finally(() => clearTimeout(timer));
        assert.equal(out.stdout, `call ${i}\n`);
      } finally {
        c.close();
      }
    }
    client = await connect(vm!.target, { timeoutMs: 30000 });
  });

  it('a host that hangs up while the agent is sending leaves the agent idle, not polling the hung-up port, and the next host is served', async () => {
    // utime + stime of the agent (the parent of porthole-spawn, the parent of this shell), in seconds.
    const agentCpu = async (c: PortholeClient) => {
      const [user, system] = (await run(c, ['sh', '-c', `cut -d" " -f14,15 /proc/${AGENT_PID}/stat`])).stdout.trim().split(' ').map(Number);
      return (user + system) / 100;
    };
    assert.equal((await run(client, ['sh', '-c', 'head -c 16777216 /dev/zero > /tmp/hangup.bin'])).code, 0);
    const before = await agentCpu(client);
    client.close();
    const reader = await connect(vm!.target, { broker: false, timeoutMs: 30000 });
    const task = reader.readFile('/tmp/hangup.bin');
    await Promise.race([new Promise((resolve) => task.data.once('data', resolve)), task.result]);
    reader.close();
    await sleep(3000);
    client = await connect(vm!.target, { broker: false, timeoutMs: 30000 });
    const used = (await agentCpu(client)) - before;
    assert.ok(used < 1.5, `the agent used ${used.toFixed(2)} s of CPU over the 3 s without a host`);
    assert.equal((await run(client, ['echo', 'served'])).stdout, 'served\n');
  });
});

describe('end to end: the guest owner turns exec off', function () {
  this.timeout(180000);
  let vm: Vm | undefined;
  let client: PortholeClient;
  before(async () => {
    vm = await bootVm({ agent: agent(), agentConfig: '[exec]\nenabled = false\n' });
    client = await connect(vm.target, { timeoutMs: 90000 });
  });
  after(async () => {
    client?.close();
    await vm?.shutdown();
  });
  printConsoleOnFailure(() => vm);

  it('refuses exec naming the owner\'s rule, and still accepts injection', async () => {
    assert.ok(!client.hello!.capabilities.includes(3), 'hello does not announce exec');
    const err = await run(client, ['id']).then(() => undefined, (e: PortholeError) => e);
    assert.ok(err, 'exec was refused');
    assert.equal(err.codeName, 'POLICY_DENIED');
    assert.equal(err.rule, 'exec.enabled = false');
    assert.match(describeError(err), /disabled by the guest's owner: exec\.enabled = false/);
    const r = await client.installFile(Buffer.from('still works'), { path: '/tmp/ok.txt' }).result;
    assert.equal(r.size, 11);
  });
});
