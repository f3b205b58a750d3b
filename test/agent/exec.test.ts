import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentConfig, inMessages } from '@porthole/agent';
import { MAX_CHUNK_SIZE, DEFAULT_STREAM_WINDOW, v1, PortholeError, Stream } from '@porthole/protocol';
import { AgentHarness, TRANSPORTS, socketLink, startAgentHarness } from './harness';
import { exec, info } from './client';

const E = v1.ErrorCode;
const sh = (cmd: string): v1.ExecRequest.$Properties => ({ shellCommand: cmd });
const argv = (...a: string[]): v1.ExecRequest.$Properties => ({ argv: a.map((x) => Buffer.from(x)) });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Host side of an exec that sends control messages a while after the command started. */
const sendAfterStart = (messages: v1.StreamMessage.$Properties[], delayMs: number) => async (stream: Stream, started: Promise<number>) => {
  await started;
  await sleep(delayMs);
  for (const m of messages) await stream.send(m);
  stream.end();
};

/** A process is gone when it no longer exists or is only a zombie waiting for its reaper. */
function gone(pid: number): boolean {
  try {
    return /^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return true;
  }
}

async function waitGone(pid: number, ms = 5000): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(20)) if (gone(pid)) return true;
  return gone(pid);
}

/** Every channel with porthole-spawn starting the commands (the default), and Node's child_process once. */
const SUITES = [
  ...TRANSPORTS.map((t) => ({ name: `over ${t.name}`, link: t.link, spawnHelper: true })),
  { name: "over a socket, started by Node's child_process (exec.spawn_helper = false)", link: socketLink, spawnHelper: false },
];

describe('agent: output pieces as messages', () => {
  it('groups pieces up to the size of a message, splitting a piece that does not fit without copying it', () => {
    const a = Buffer.alloc(70, 1);
    const b = Buffer.alloc(50, 2);
    const c = Buffer.alloc(10, 3);
    const messages = inMessages([a, b, c], 100);
    assert.deepEqual(messages.map((m) => m.map((p) => p.length)), [[70, 30], [20, 10]]);
    assert.equal(messages[0][1].buffer, b.buffer, 'a split piece is a view of the original');
    assert.ok(Buffer.concat(messages.flat()).equals(Buffer.concat([a, b, c])));
    assert.deepEqual(inMessages([Buffer.alloc(250)], 100).map((m) => m[0].length), [100, 100, 50]);
    assert.deepEqual(inMessages([], 100), []);
  });
});

for (const suite of SUITES) describe(`agent: exec ${suite.name}`, function () {
  this.timeout(30000);
  let h: AgentHarness;
  const spawned: number[] = [];
  beforeEach(async () => {
    h = await startAgentHarness((c) => { c.exec.secretArgs = ['--password']; c.exec.groups = ['4321']; c.exec.spawnHelper = suite.spawnHelper; }, suite.link);
  });
  afterEach(async () => {
    for (const pid of spawned.splice(0)) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    await h.cleanup();
  });

  it('streams stdout and stderr, each in order, and reports the exit code and duration', async () => {
    const r = await exec(h.session, sh('for i in $(seq 1 300); do echo out$i; echo err$i >&2; done; exit 3'));
    const lines = (b: Buffer) => b.toString().trim().split('\n');
    assert.deepEqual(lines(r.stdout), Array.from({ length: 300 }, (_, i) => `out${i + 1}`));
    assert.deepEqual(lines(r.stderr), Array.from({ length: 300 }, (_, i) => `err${i + 1}`));
    assert.ok(r.pid > 0);
    assert.equal(r.exit.exited, true);
    assert.equal(r.exit.code, 3);
    assert.ok(Number(r.exit.durationMs) >= 0 && Number(r.exit.durationMs) < 20000);
    const line = h.audit.find((l) => l.request === 'exec');
    assert.equal(line?.exitCode, 3);
    assert.equal(line?.result, 'ok');
  });

  it('delivers output as it is written, not at exit', async () => {
    const started = Date.now();
    let firstAt = 0;
    const r = await exec(h.session, sh('echo first; sleep 1; echo second'), { onOutput: () => { firstAt ||= Date.now() - started; } });
    assert.equal(r.stdout.toString(), 'first\nsecond\n');
    assert.ok(firstAt < 800, `first line after ${firstAt} ms`);
    assert.ok(Number(r.exit.durationMs) >= 1000);
  });

  it('streams stdin and closes it', async () => {
    const pieces = Array.from({ length: 40 }, (_, i) => Buffer.alloc(128 * 1024, i));
    const r = await exec(h.session, argv('sha256sum'), { stdin: pieces });
    const { createHash } = await import('node:crypto');
    assert.equal(r.stdout.toString().split(' ')[0], createHash('sha256').update(Buffer.concat(pieces)).digest('hex'));
    assert.equal(r.exit.code, 0);
    const empty = await exec(h.session, argv('cat'), { stdin: [] });
    assert.equal(empty.stdout.length, 0, 'closing stdin ends cat');
  });

  it('sets environment, working directory, user and group; logs no env values and redacts secrets', async () => {
    const r = await exec(h.session, {
      ...argv('/bin/sh', '-c', 'echo "$FOO"; pwd; id -u; id -g; echo "$HOME"', 'x', '--password', 'pw1'),
      env: { FOO: 'bar-value', TOKEN: 'tok-value' }, secretEnv: ['TOKEN'], cwd: Buffer.from('/tmp'), user: { name: 'nobody' }, group: { numeric: 4321 },
    });
    assert.equal(r.stdout.toString(), 'bar-value\n/tmp\n65534\n4321\n/nonexistent\n');
    const r2 = await exec(h.session, { ...argv('echo', 'tok-value'), env: { TOKEN: 'tok-value' }, secretEnv: ['TOKEN'], clearEnv: true });
    assert.equal(r2.stdout.toString(), 'tok-value\n');
    const text = JSON.stringify(h.audit);
    assert.ok(!text.includes('bar-value') && !text.includes('tok-value') && !text.includes('pw1'), text);
    assert.ok(h.audit.some((l) => JSON.stringify(l.argv) === JSON.stringify(['echo', '***'])));
    assert.ok(h.audit.some((l) => (l.argv as string[] | undefined)?.includes('--password') && (l.argv as string[]).includes('***')));
  });

  it('a timeout kills the whole process group, grandchildren included', async () => {
    const r = await exec(h.session, { ...sh('sleep 300 & echo $!; sleep 300; echo never'), timeoutMs: 500 });
    const grandchild = Number(r.stdout.toString().trim());
    spawned.push(grandchild);
    assert.ok(grandchild > 0);
    assert.equal(r.exit.timedOut, true);
    assert.equal(r.exit.exited, false);
    assert.equal(r.exit.signal, 'SIGTERM');
    assert.ok(await waitGone(grandchild), `grandchild ${grandchild} still runs`);
    assert.ok(await waitGone(r.pid));
    assert.ok(Number(r.exit.durationMs) < 5000);
  });

  it('cancel from the host stops the command; a reset stream does too', async () => {
    const r = await exec(h.session, sh('echo ready; exec sleep 300'), {
      control: sendAfterStart([{ cancel: { reason: 'test' } }], 100),
    });
    assert.equal(r.exit.cancelled, true);
    assert.equal(r.exit.signal, 'SIGTERM');
    assert.ok(await waitGone(r.pid));

    let pid = 0;
    await assert.rejects(exec(h.session, sh('exec sleep 300'), {
      control: async (stream, started) => {
        pid = await started;
        spawned.push(pid);
        stream.reset(new PortholeError(E.ERROR_CODE_CANCELLED, 'host gave up'));
      },
    }));
    assert.ok(pid > 0);
    assert.ok(await waitGone(pid), 'the command went with its stream');
  });

  it('delivers signals to the command (an unknown one is only logged)', async () => {
    const r = await exec(h.session, sh('trap "echo got-usr1; exit 7" USR1; echo ready; while :; do sleep 0.05; done'), {
      control: sendAfterStart([{ execSignal: { signal: 'SIGNOPE' } }, { execSignal: { signal: 'USR1' } }], 300),
    });
    assert.match(r.stdout.toString(), /ready\ngot-usr1\n/);
    assert.equal(r.exit.code, 7);
    assert.ok(h.audit.some((l) => l.message === 'signal not delivered' && /unknown signal SIGNOPE/.test(String(l.error))));
  });

  it('a process that outpaces the host is held back by the pipe, not buffered', async () => {
    let pid = 0;
    let written = 0;
    const r = await exec(h.session, sh('exec head -c 50000000 /dev/zero'), {
      discardOutput: true,
      control: async (stream, started) => {
        pid = await started;
        stream.end();
      },
      onOutput: async () => {
        if (written) return;
        await sleep(1000); // the host stops reading for a second
        written = Number(/wchar:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))![1]);
      },
    });
    assert.equal(r.exit.code, 0);
    // What the stream window (4 MiB) and the pipe and socket buffers hold, far below the 50 MB that an
    // agent buffering everything would have taken in during that second. (Small enough for xenstore's pace.)
    assert.ok(written > 0 && written < 12 * 1024 * 1024, `head wrote ${written} bytes while the host was not reading`);
  });

  it('sends large output byte for byte, in order, in messages no larger than the host\'s chunk size', async () => {
    const file = join(h.dir, 'random.bin');
    const data = randomBytes(3 * 1024 * 1024 + 12345);
    writeFileSync(file, data);
    let largest = 0;
    const r = await exec(h.session, sh(`cat ${file}; head -c 70000 ${file} >&2`), {
      onOutput: (chunk) => { largest = Math.max(largest, chunk.length); },
    });
    assert.equal(r.exit.code, 0);
    assert.equal(createHash('sha256').update(r.stdout).digest('hex'), createHash('sha256').update(data).digest('hex'));
    assert.ok(r.stderr.equals(data.subarray(0, 70000)));
    assert.ok(largest <= MAX_CHUNK_SIZE && largest > 0, `largest message ${largest} bytes`);
    // porthole-spawn's records (128 KiB) come in 64 KiB reads of its pipe and still go as one message each.
    if (suite.spawnHelper) assert.ok(largest > 64 * 1024, `largest message ${largest} bytes`);
  });

  it('sends all of a command\'s output even when the host stops reading past the command\'s exit', async () => {
    let held = false;
    let total = 0;
    // A little more than the host's window: the agent sends the window and waits for credit while head
    // writes the rest into the pipe and exits; the host then stops reading for longer than the agent's
    // 2 s grace for pipes that grandchildren keep open.
    const size = DEFAULT_STREAM_WINDOW + 40 * 1024;
    const r = await exec(h.session, sh(`exec head -c ${size} /dev/zero`), {
      discardOutput: true,
      onOutput: async (data) => {
        total += data.length;
        if (held) return;
        held = true;
        await sleep(3500);
      },
    });
    assert.equal(r.exit.code, 0);
    assert.equal(total, size);
  });

  it('runs 50 commands at once', async function () {
    this.timeout(60000);
    const started = Date.now();
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => exec(h.session, sh(`sleep 1; echo job${i}`))));
    results.forEach((r, i) => assert.equal(r.stdout.toString(), `job${i}\n`));
    assert.ok(Date.now() - started < 15000, 'they ran concurrently');
  });

  it('refuses what the policy or the guest cannot do, naming the cause', async () => {
    await assert.rejects(exec(h.session, argv('/no/such/command')), (e: PortholeError) => e.code === E.ERROR_CODE_NOT_FOUND && /\/no\/such\/command/.test(e.message));
    await assert.rejects(exec(h.session, { ...argv('true'), user: { name: 'no-such-user-y' } }), (e: PortholeError) => e.code === E.ERROR_CODE_NO_SUCH_USER);
    await assert.rejects(exec(h.session, { ...argv('true'), cwd: Buffer.from('/no/such/dir') }), (e: PortholeError) =>
      e.code === E.ERROR_CODE_NOT_FOUND && /working directory/.test(e.message));
    await assert.rejects(exec(h.session, { ...argv('true'), shellCommand: 'true' }), (e: PortholeError) => e.code === E.ERROR_CODE_INVALID_ARGUMENT);

    h.agent.setConfig({ ...h.config, exec: { ...h.config.exec, maxConcurrent: 2 } });
    const long = [exec(h.session, sh('sleep 1')), exec(h.session, sh('sleep 1'))];
    await sleep(200);
    await assert.rejects(exec(h.session, argv('true')), (e: PortholeError) =>
      e.code === E.ERROR_CODE_RESOURCE_EXHAUSTED && e.rule === 'exec.max_concurrent = 2');
    await Promise.all(long);
    assert.equal((await exec(h.session, argv('true'))).exit.code, 0, 'allowed again once they finished');

    h.agent.setConfig({ ...h.config, exec: { ...h.config.exec, enabled: false } });
    await assert.rejects(exec(h.session, argv('true')), (e: PortholeError) =>
      e.code === E.ERROR_CODE_POLICY_DENIED && e.rule === 'exec.enabled = false' && /disabled by the guest's owner/.test(e.message));
    const now = await info(h.session);
    assert.ok(!now.hello!.capabilities!.includes(v1.Capability.CAPABILITY_EXEC), 'info shows the current policy');
    assert.ok(h.session.peerHello!.capabilities.includes(v1.Capability.CAPABILITY_EXEC), 'the hello showed the policy at connect time');
  });
});

describe('agent: exec policy, groups and environment', function () {
  this.timeout(60000);
  let h: AgentHarness;
  let secret: string;
  afterEach(async () => h.cleanup());

  /** A file only root and group root may read, in directories anyone may enter. */
  async function start(tune: (c: AgentConfig) => void = () => undefined) {
    h = await startAgentHarness((c) => { c.exec.users = ['nobody']; tune(c); });
    for (const d of [h.dir, h.root]) chmodSync(d, 0o755);
    secret = join(h.root, 'secret');
    writeFileSync(secret, 'root only\n', { mode: 0o640 });
  }
  const asNobody = (req: v1.ExecRequest.$Properties): v1.ExecRequest.$Properties => ({ ...req, user: { name: 'nobody' } });

  it('exec -u nobody -g 0 is refused by rule; the user\'s own group and groups the owner names are allowed', async () => {
    await start();
    await assert.rejects(exec(h.session, asNobody({ ...argv('/bin/cat', secret), group: { numeric: 0 } })), (e: PortholeError) =>
      e.code === E.ERROR_CODE_POLICY_DENIED && e.rule === "exec.groups = [] (only the user's own groups)" && /group root/.test(e.message));
    await assert.rejects(exec(h.session, asNobody({ ...argv('/bin/cat', secret), group: { name: 'root' } })), (e: PortholeError) => e.code === E.ERROR_CODE_POLICY_DENIED);
    const own = await exec(h.session, asNobody({ ...argv('/bin/cat', secret), group: { name: 'nogroup' } }));
    assert.notEqual(own.exit.code, 0, 'allowed, and the file stays unreadable');
    assert.equal(own.stdout.length, 0);
    h.agent.setConfig({ ...h.config, exec: { ...h.config.exec, groups: ['root'] } });
    const named = await exec(h.session, asNobody({ ...argv('/bin/cat', secret), group: { numeric: 0 } }));
    assert.equal(named.stdout.toString(), 'root only\n', 'the owner allowed group root');
  });

  it('LD_PRELOAD and other loader variables are refused unless exec.env_allow names them', async () => {
    await start((c) => { c.exec.commands = ['/bin/echo']; });
    const lib = join(h.root, 'preload.so');
    const src = join(h.root, 'preload.c');
    writeFileSync(src, '#include <unistd.h>\n__attribute__((constructor)) static void run(void) { write(2, "library code ran\\n", 17); }\n');
    execFileSync('cc', ['-shared', '-fPIC', '-o', lib, src]);
    chmodSync(lib, 0o755);
    await assert.rejects(exec(h.session, asNobody({ ...argv('/bin/echo', 'hello'), env: { LD_PRELOAD: lib } })), (e: PortholeError) =>
      e.code === E.ERROR_CODE_POLICY_DENIED && e.rule === 'exec.env_allow = []' && /LD_PRELOAD/.test(e.message));
    await assert.rejects(exec(h.session, asNobody({ ...argv('/bin/echo', 'hello'), env: { [`LD_PRELOAD=${lib}`]: '' } })), (e: PortholeError) =>
      e.code === E.ERROR_CODE_INVALID_ARGUMENT);
    const plain = await exec(h.session, asNobody({ ...argv('/bin/echo', 'hello'), env: { GREETING: 'hi' } }));
    assert.equal(plain.stdout.toString(), 'hello\n');
    h.agent.setConfig({ ...h.config, exec: { ...h.config.exec, envAllow: ['LD_PRELOAD'] } });
    const allowed = await exec(h.session, asNobody({ ...argv('/bin/echo', 'hello'), env: { LD_PRELOAD: lib } }));
    assert.equal(allowed.stderr.toString(), 'library code ran\n', 'what the owner allows works');
  });
});

