import { strict as assert } from 'node:assert';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { Socket } from 'node:net';
import { HelperSpawner, NodeSpawner, Spawner, SpawnOptions, readDirectly } from '@porthole/agent';
import { SPAWN_HELPER } from './harness';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const sh = (script: string, extra: Partial<SpawnOptions> = {}): SpawnOptions => ({ file: 'sh', args: ['-c', script], cwd: '/', env: { PATH }, stdin: false, ...extra });

function collect(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  stream.on('data', (d: Buffer) => parts.push(d));
  return new Promise((resolve, reject) => {
    stream.on('end', () => resolve(Buffer.concat(parts)));
    stream.on('error', reject);
  });
}

/** Warnings the spawner logs, for the tests that expect one. */
function recordingLog() {
  const warnings: Array<{ message: string; meta: Record<string, unknown> }> = [];
  const log = { warn: (message: string, meta: Record<string, unknown> = {}) => warnings.push({ message, meta }), info() {}, error() {}, debug() {} };
  return { warnings, log: log as unknown as ConstructorParameters<typeof HelperSpawner>[1] };
}

/** Pids of the helper processes this test process started. */
const helperPids = () => execFileSync('sh', ['-c', `pgrep -P ${process.pid} -x porthole-spawn || true`], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number);

const SPAWNERS: Array<{ name: string; make: () => Spawner }> = [
  { name: 'porthole-spawn', make: () => new HelperSpawner(SPAWN_HELPER, recordingLog().log) },
  { name: "Node's child_process", make: () => new NodeSpawner() },
];

for (const { name, make } of SPAWNERS) describe(`agent: commands started by ${name}`, function () {
  this.timeout(30000);
  let spawner: Spawner;
  beforeEach(() => { spawner = make(); });
  afterEach(() => spawner.close());

  it('keeps stdout and stderr apart and reports the exit code', async () => {
    const c = await spawner.spawn(sh('echo out; echo err >&2; exit 7'));
    const [out, err, status] = await Promise.all([collect(c.stdout), collect(c.stderr), c.exited]);
    assert.equal(out.toString(), 'out\n');
    assert.equal(err.toString(), 'err\n');
    assert.deepEqual(status, [7, null]);
  });

  it('reports the signal that ended a command', async () => {
    const c = await spawner.spawn(sh('kill -KILL $$'));
    c.stdout.resume();
    c.stderr.resume();
    assert.deepEqual(await c.exited, [null, 'SIGKILL']);
  });

  it('sets the working directory and exactly the given environment, finding bare names in its PATH', async () => {
    const c = await spawner.spawn(sh('pwd; echo "$ONLY"; env | wc -l', { cwd: '/tmp', env: { PATH, ONLY: 'x y' } }));
    c.stderr.resume();
    const lines = (await collect(c.stdout)).toString().trim().split('\n');
    assert.equal(lines[0], '/tmp');
    assert.equal(lines[1], 'x y');
    assert.ok(Number(lines[2]) <= 4, `the command saw ${lines[2]} variables (PATH, ONLY and the shell's own PWD/SHLVL at most)`);
    assert.deepEqual(await c.exited, [0, null]);
  });

  it('leads its own process group and session', async () => {
    const c = await spawner.spawn(sh('cut -d" " -f5,6 /proc/$$/stat'));
    c.stderr.resume();
    const [pgid, sid] = (await collect(c.stdout)).toString().trim().split(' ').map(Number);
    assert.equal(pgid, c.pid);
    assert.equal(sid, c.pid);
  });

  it('switches user and group, without supplementary groups (as root; anyone else is refused with EPERM)', async () => {
    if (process.getuid!() !== 0) {
      await assert.rejects(spawner.spawn(sh('id -u', { uid: 0, gid: 0 })), (e: NodeJS.ErrnoException) => e.code === 'EPERM');
      return;
    }
    const c = await spawner.spawn(sh('id -u; id -g; id -G', { uid: 65534, gid: 65534 }));
    c.stderr.resume();
    assert.deepEqual((await collect(c.stdout)).toString().trim().split('\n'), ['65534', '65534', '65534']);
  });

  it('carries 4 MiB through stdin and back out unchanged', async () => {
    const data = randomBytes(4 * 2 ** 20);
    const c = await spawner.spawn(sh('cat', { stdin: true }));
    c.stderr.resume();
    const out = collect(c.stdout);
    c.stdin!.end(data);
    assert.equal(createHash('sha256').update(await out).digest('hex'), createHash('sha256').update(data).digest('hex'));
    assert.deepEqual(await c.exited, [0, null]);
  });

  it('without a stdin pipe the command reads /dev/null', async () => {
    const c = await spawner.spawn(sh('wc -c; readlink /proc/$$/fd/0'));
    c.stderr.resume();
    assert.deepEqual((await collect(c.stdout)).toString().trim().split('\n'), ['0', '/dev/null']);
  });

  it('a command whose output is not read waits on its pipe instead of filling memory', async () => {
    const c = await spawner.spawn(sh('head -c 33554432 /dev/zero; echo done >&2'));
    const err = collect(c.stderr);
    let exited = false;
    void c.exited.then(() => { exited = true; });
    await sleep(1500);
    assert.equal(exited, false, 'the writer is held while nobody reads');
    let total = 0;
    const ended = new Promise((r) => c.stdout.once('end', r));
    c.stdout.on('data', (d: Buffer) => { total += d.length; });
    await c.exited;
    await ended;
    assert.equal(total, 32 * 2 ** 20);
    assert.equal((await err).toString(), 'done\n');
  });

  it('names why a command cannot start', async () => {
    await assert.rejects(spawner.spawn(sh('', { file: 'no-such-command-here', args: [] })), (e: NodeJS.ErrnoException) => e.code === 'ENOENT');
    await assert.rejects(spawner.spawn(sh('', { file: '/etc/passwd', args: [] })), (e: NodeJS.ErrnoException) => e.code === 'EACCES');
    await assert.rejects(spawner.spawn(sh('true', { cwd: '/no/such/dir' })), (e: NodeJS.ErrnoException) => e.code === 'ENOENT');
    await assert.rejects(spawner.spawn(sh('echo a\0b')), /must not contain NUL bytes/);
  });

  it('runs 50 commands at once, each with its own result', async () => {
    const runs = await Promise.all(Array.from({ length: 50 }, (_, i) => spawner.spawn(sh(`sleep 0.$((${i} % 3)); echo ${i}; exit ${i % 7}`))));
    const results = await Promise.all(runs.map(async (c) => {
      c.stderr.resume();
      return [(await collect(c.stdout)).toString().trim(), await c.exited] as const;
    }));
    results.forEach(([out, status], i) => {
      assert.equal(out, String(i));
      assert.deepEqual(status, [i % 7, null]);
    });
  });
});

describe('agent: porthole-spawn, the helper itself', function () {
  this.timeout(30000);

  it('prints its protocol with --version and refuses other arguments', () => {
    assert.equal(execFileSync(SPAWN_HELPER, ['--version'], { encoding: 'utf8' }).trim(), 'porthole-spawn protocol 1');
    assert.throws(() => execFileSync(SPAWN_HELPER, ['--start'], { stdio: 'pipe' }), (e: { status: number; stderr: Buffer }) => e.status === 2 && /usage/.test(e.stderr.toString()));
  });

  /** The helper on its own: `start` sends 'S' records; every record received, with the read (chunk) it came in and when. */
  function rawHelper() {
    const child = spawn(SPAWN_HELPER, [], { stdio: ['pipe', 'pipe', 'inherit'] });
    const got: Array<{ type: string; id: number; chunk: number; at: number }> = [];
    let pending = Buffer.alloc(0);
    let chunks = 0;
    child.stdout.on('data', (d: Buffer) => {
      const chunk = chunks++;
      pending = Buffer.concat([pending, d]);
      while (pending.length >= 4 && pending.length >= 4 + pending.readUInt32LE(0)) {
        got.push({ type: pending.toString('latin1', 4, 5), id: pending.readUInt32LE(5), chunk, at: Date.now() });
        pending = pending.subarray(4 + pending.readUInt32LE(0));
      }
    });
    const start = (id: number, script: string) => {
      const fields = Buffer.from(['', '', '', '/', '/bin/sh', '3', 'sh', '-c', script, `PATH=${PATH}`, ''].join('\0'));
      const head = Buffer.alloc(9);
      head.writeUInt32LE(5 + fields.length, 0);
      head.write('S', 4, 'latin1');
      head.writeUInt32LE(id, 5);
      child.stdin.write(Buffer.concat([head, fields]));
      return Date.now();
    };
    const until = async (test: () => boolean) => {
      for (let i = 0; i < 500 && !test(); i++) await sleep(10);
      assert.ok(test(), `records so far: ${got.map((r) => r.type + r.id).join(' ')}`);
    };
    return { child, got, start, until, of: (id: number) => got.filter((r) => r.id === id && r.type !== 'R') };
  }

  it('holds a start back briefly: a quick command comes start to exit in one batch, a long one is reported started at once', async () => {
    const h = rawHelper();
    try {
      await h.until(() => h.got.some((r) => r.type === 'R'));
      // A command that ends at once: 'P' first, then both ends and the exit, in one read (5 tries: a busy machine may
      // run a command longer than the hold).
      for (let id = 1; id <= 5; id++) {
        h.start(id, 'exit 3');
        await h.until(() => h.of(id).length === 4);
        assert.deepEqual(h.of(id).map((r) => r.type).slice(0, 1), ['P']);
        assert.deepEqual(h.of(id).map((r) => r.type).slice(1).sort(), ['E', 'E', 'X']);
      }
      assert.ok([1, 2, 3, 4, 5].some((id) => new Set(h.of(id).map((r) => r.chunk)).size === 1), 'at least one quick command came in one read');
      // A command that runs on: its start comes after the hold, long before it ends.
      const since = h.start(6, 'sleep 1');
      await h.until(() => h.of(6).length >= 1);
      assert.equal(h.of(6)[0].type, 'P');
      assert.ok(h.of(6)[0].at - since < 500, `start reported after ${h.of(6)[0].at - since} ms`);
      assert.equal(h.of(6).length, 1, 'nothing else yet');
      // Output releases the start at once, ahead of the output.
      h.start(7, 'echo hi; sleep 1');
      await h.until(() => h.of(7).some((r) => r.type === 'O'));
      assert.deepEqual(h.of(7).map((r) => r.type), ['P', 'O']);
    } finally {
      h.child.stdin.end();
    }
  });

  it('starts commands with every signal at its default and none blocked, even when it was started ignoring some', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'porthole-spawn-'));
    const wrapper = join(dir, 'ignoring');
    writeFileSync(wrapper, `#!/bin/sh\ntrap '' HUP USR1 TERM\nexec ${SPAWN_HELPER}\n`, { mode: 0o755 });
    try {
      for (const path of [SPAWN_HELPER, wrapper]) {
        const spawner = new HelperSpawner(path, recordingLog().log);
        try {
          const c = await spawner.spawn(sh("grep -E '^Sig(Ign|Blk)' /proc/self/status"));
          c.stderr.resume();
          assert.deepEqual((await collect(c.stdout)).toString().trim().split('\n'), ['SigBlk:\t0000000000000000', 'SigIgn:\t0000000000000000'], path);
        } finally {
          spawner.close();
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reads what a socket brings straight from its handle, past the Readable, and still reports its end', async () => {
    const child = spawn('sh', ['-c', 'echo one; sleep 0.1; echo two'], { stdio: ['ignore', 'pipe', 'ignore'] });
    const out = child.stdout as Socket;
    const delivered: string[] = [];
    let events = 0;
    readDirectly(out, (data) => delivered.push(data.toString()));
    out.on('data', () => events++);
    await new Promise((r) => out.on('end', r));
    assert.deepEqual(delivered, ['one\n', 'two\n']);
    assert.equal(events, 0, 'no data events');
  });

  it('tells when the outputs of a command had ended empty by the time it was reported started', async () => {
    const spawner = new HelperSpawner(SPAWN_HELPER, recordingLog().log);
    try {
      // A quick command (5 tries: a busy machine may run one longer than the helper holds its start).
      const quick: boolean[] = [];
      for (let i = 0; i < 5; i++) {
        const c = await spawner.spawn(sh('exit 0'));
        quick.push(c.outputsDone?.() === true);
        assert.deepEqual(await c.exited, [0, null]);
      }
      assert.ok(quick.includes(true), 'a quick command came with its ends');
      // Output to read, or a command still running: not done.
      const talking = await spawner.spawn(sh('echo hi'));
      assert.equal(talking.outputsDone?.(), false);
      talking.stderr.resume();
      assert.equal((await collect(talking.stdout)).toString(), 'hi\n');
      const slow = await spawner.spawn(sh('sleep 0.3'));
      assert.equal(slow.outputsDone?.(), false);
      slow.stdout.resume();
      slow.stderr.resume();
      await slow.exited;
    } finally {
      spawner.close();
    }
  });

  it('a malformed record ends it with the cause on stderr', async () => {
    const child = spawn(SPAWN_HELPER, [], { stdio: ['pipe', 'pipe', 'pipe'] });
    const err = collect(child.stderr);
    child.stdout.resume();
    child.stdin.end(Buffer.from([0xff, 0xff, 0xff, 0x7f, 0x53])); // a 2 GiB record
    const code = await new Promise((r) => child.on('exit', r));
    assert.equal(code, 2);
    assert.match((await err).toString(), /bad record length/);
  });

  it('stops reading a command that grandchildren keep open once the reader drops it', async () => {
    const spawner = new HelperSpawner(SPAWN_HELPER, recordingLog().log);
    try {
      const c = await spawner.spawn(sh('sleep 30 & echo started'));
      const first = await new Promise<Buffer>((r) => c.stdout.once('data', r));
      assert.equal(first.toString(), 'started\n');
      assert.deepEqual(await c.exited, [0, null]);
      // The background sleep still holds the pipe: the output has not ended, until the reader gives up.
      c.stdout.destroy();
      c.stderr.destroy();
      const sleeper = Number(execFileSync('sh', ['-c', `pgrep -s ${c.pid} sleep`], { encoding: 'utf8' }).trim());
      process.kill(-c.pid, 'SIGKILL');
      assert.ok(sleeper > 0);
      // The helper still works for the next command.
      const next = await spawner.spawn(sh('echo next'));
      next.stderr.resume();
      assert.equal((await collect(next.stdout)).toString(), 'next\n');
    } finally {
      spawner.close();
    }
  });

  it('if the helper dies, running commands fail with the cause and the next one starts a new helper', async () => {
    const spawner = new HelperSpawner(SPAWN_HELPER, recordingLog().log);
    try {
      const c = await spawner.spawn(sh('sleep 30'));
      c.stdout.resume();
      c.stderr.resume();
      const [helper] = helperPids();
      assert.ok(helper, 'the helper runs as a child of the agent');
      process.kill(helper, 'SIGKILL');
      await assert.rejects(c.exited, /porthole-spawn ended \(killed by SIGKILL\): the exit status is lost/);
      process.kill(-c.pid, 'SIGKILL');
      const next = await spawner.spawn(sh('echo again'));
      next.stderr.resume();
      assert.equal((await collect(next.stdout)).toString(), 'again\n');
      assert.notEqual(helperPids()[0], helper);
    } finally {
      spawner.close();
    }
  });

  it('a helper that cannot start leaves the work to Node, with a warning', async () => {
    const { warnings, log } = recordingLog();
    const spawner = new HelperSpawner('/bin/false', log);
    const c = await spawner.spawn(sh('echo fine'));
    c.stderr.resume();
    assert.equal((await collect(c.stdout)).toString(), 'fine\n');
    assert.match(warnings[0]?.message ?? '', /porthole-spawn cannot start: commands start with Node's child_process/);
    assert.equal(spawner.description, "Node's child_process");
  });

  it('ends when the agent closes it, leaving its commands running', async () => {
    const spawner = new HelperSpawner(SPAWN_HELPER, recordingLog().log);
    const c = await spawner.spawn(sh('sleep 30'));
    c.stdout.resume();
    c.stderr.resume();
    const [helper] = helperPids();
    spawner.close();
    for (let i = 0; i < 100 && helperPids().includes(helper); i++) await sleep(20);
    assert.ok(!helperPids().includes(helper), 'the helper ended');
    process.kill(c.pid, 0); // still there
    process.kill(-c.pid, 'SIGKILL');
  });
});
