import { strict as assert } from 'node:assert';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Guest, porthole, startGuest } from './guest';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('broker: porthole CLI against the real agent', function () {
  this.timeout(60000);
  let guest: Guest;
  before(async () => {
    guest = await startGuest((c, root) => { c.fileRead.deny.push(join(root, 'secret')); });
  });
  after(async () => guest.stop());

  describe('--help', () => {
    it('lists every command, runnable examples and the exit codes', async () => {
      const r = await porthole(['--help']);
      assert.equal(r.code, 0);
      const help = r.stdout.toString();
      for (const cmd of ['info', 'ping', 'exec', 'cp', 'inject', 'serve']) assert.match(help, new RegExp(`^  ${cmd}\\b`, 'm'), `${cmd} missing`);
      const examples = [...help.matchAll(/^ {2}porthole (\S+)/gm)].map((m) => m[1]);
      assert.ok(examples.length >= 5);
      for (const e of examples) assert.match(help, new RegExp(`^  ${e}\\b`, 'm'), `example uses unknown command ${e}`);
      assert.match(help, /Exit codes: 0 ok; 1 failed .*; 2 usage; 3 VM or agent unreachable/s);
      assert.match(help, /128\+N for signal N, 124 on\s+--command-timeout, 130 when interrupted/);
      const serve = (await porthole(['serve', '--help'])).stdout.toString();
      assert.match(serve, /--listen <spec>/);
      assert.match(serve, /porthole serve --listen tcp:127\.0\.0\.1:8750 --token-file/);
    });

    it('exits 2 on a usage error', async () => {
      const r = await porthole(['frobnicate']);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /unknown command 'frobnicate'/);
      const cp = await porthole(['cp', 'a', 'b']);
      assert.equal(cp.code, 2);
      assert.match(cp.stderr, /exactly one of SOURCE and DESTINATION must be TARGET:\/path/);
    });
  });

  it('info and ping, human and --json', async () => {
    const info = await porthole(['info', guest.target]);
    assert.equal(info.code, 0, info.stderr);
    assert.match(info.stdout.toString(), /^agent: +porthole-agent \S+ \(protocol v1\)$/m);
    assert.match(info.stdout.toString(), /^capabilities: file_write, file_read, exec/m);
    const json = JSON.parse((await porthole(['--json', 'info', guest.target])).stdout.toString());
    assert.equal(json.ok, true);
    assert.equal(json.protocol, 1);
    assert.deepEqual(json.capabilities.slice(0, 3), ['file_write', 'file_read', 'exec']);
    assert.ok(json.limits.readDeny.includes(join(guest.root, 'secret')));
    assert.ok(json.limits.execEnvRefused.includes('LD_*'));
    assert.deepEqual([json.limits.maxStreams, json.limits.maxOpenFiles, json.limits.peerTimeoutSeconds], [128, 64, 30]);
    assert.match(info.stdout.toString(), /^exec env: +refused LD_\* .*; allowed anyway -$/m);
    assert.match(info.stdout.toString(), /^per host: +max streams 128; max open files 64; dropped after 30 s of silence$/m);
    const ping = await porthole(['ping', guest.target]);
    assert.match(ping.stdout.toString(), /^pong from porthole-agent \S+ in \d+\.\d\d ms$/m);
    const pj = JSON.parse((await porthole(['--json', 'ping', guest.target])).stdout.toString());
    assert.equal(typeof pj.rttMs, 'number');
  });

  describe('exec', () => {
    it('passes stdout and stderr through and exits with the remote code', async () => {
      const r = await porthole(['exec', guest.target, '--', 'sh', '-c', 'echo out; echo err >&2; exit 42'], { stdin: '' });
      assert.equal(r.code, 42);
      assert.equal(r.stdout.toString(), 'out\n');
      assert.equal(r.stderr, 'err\n');
    });

    it('exits 128+N when the remote command dies of signal N', async () => {
      assert.equal((await porthole(['exec', guest.target, '--', 'sh', '-c', 'kill -TERM $$'], { stdin: '' })).code, 128 + 15);
      assert.equal((await porthole(['exec', guest.target, '--shell', 'kill -KILL $$'], { stdin: '' })).code, 128 + 9);
    });

    it('streams output live, not at exit', async () => {
      const started = Date.now();
      const chunks: number[] = [];
      const r = await porthole(['exec', guest.target, '--shell', 'echo first; sleep 1.5; echo second'], { stdin: '', onStdout: () => chunks.push(Date.now() - started) });
      const ended = Date.now() - started;
      assert.equal(r.stdout.toString(), 'first\nsecond\n');
      assert.ok(chunks.length >= 2 && ended - chunks[0] >= 1200, `first output at ${chunks[0]} ms, exit at ${ended} ms`);
    });

    it('forwards stdin, env, cwd and user', async () => {
      const data = randomBytes(3 * 1024 * 1024);
      const r = await porthole(['exec', guest.target, '--', 'sha256sum'], { stdin: data });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.toString().split(' ')[0], sha(data));
      const env = await porthole(['exec', '-e', 'GREETING=hi there', '-C', guest.root, '-u', 'nobody', guest.target, '--shell', 'echo "$GREETING" $(pwd) $(id -un)'], { stdin: '' });
      assert.equal(env.stdout.toString(), `hi there ${guest.root} nobody\n`);
    });

    it('--json reports the exit status on stderr, keeping stdout the command\'s', async () => {
      const r = await porthole(['--json', 'exec', guest.target, '--', 'echo', 'plain'], { stdin: '' });
      assert.equal(r.code, 0);
      assert.equal(r.stdout.toString(), 'plain\n');
      const status = JSON.parse(r.stderr);
      assert.deepEqual([status.ok, status.code, status.signal, status.timedOut], [true, 0, null, false]);
    });

    it('exits 124 when --command-timeout kills the command', async () => {
      const t = Date.now();
      const r = await porthole(['exec', '-t', '1', guest.target, '--', 'sleep', '20'], { stdin: '' });
      assert.equal(r.code, 124);
      assert.ok(Date.now() - t < 10000);
    });

    for (const stdin of ['open', 'closed'] as const) {
      it(`Ctrl-C cancels the remote command and exits 130 (stdin ${stdin})`, async () => {
        const pidFile = join(guest.root, `pid-${stdin}`);
        let child = 0;
        let seen = '';
        const run = porthole(['exec', guest.target, '--shell', `echo $$ > ${pidFile}; echo ready; exec sleep 30`], {
          stdin: stdin === 'closed' ? '' : undefined, onSpawn: (pid) => (child = pid), onStdout: (b) => (seen += b.toString()),
        });
        for (let i = 0; i < 200 && !seen.includes('ready'); i++) await sleep(25);
        const remote = Number(readFileSync(pidFile, 'utf8'));
        process.kill(child, 'SIGINT');
        const r = await run;
        assert.equal(r.code, 130);
        assert.match(r.stderr, /cancelling the remote command/);
        for (let i = 0; i < 100 && existsSync(`/proc/${remote}`) && !/State:\s+Z/.test(readFileSync(`/proc/${remote}/status`, 'utf8')); i++) await sleep(50);
        assert.ok(!existsSync(`/proc/${remote}`) || /State:\s+Z/.test(readFileSync(`/proc/${remote}/status`, 'utf8')), 'the remote command was stopped');
      });
    }
  });

  describe('cp', () => {
    it('copies a file in with owner, group, mode and --mkdir; --json; no progress bar when stderr is not a terminal', async () => {
      const local = join(guest.dir, 'big.bin');
      const data = randomBytes(6 * 1024 * 1024 + 3);
      writeFileSync(local, data);
      const dest = join(guest.root, 'new', 'dir', 'big.bin');
      const r = await porthole(['cp', local, `${guest.target}:${dest}`, '--owner', 'nobody', '--group', 'nogroup', '--mode', '0604', '--mkdir']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, '', 'no progress bar on a pipe');
      assert.match(r.stdout.toString(), new RegExp(`^${dest}: ${data.length} bytes, sha256 ${sha(data)}, uid \\d+ gid \\d+ mode 0604$`, 'm'));
      assert.ok(readFileSync(dest).equals(data));
      const st = statSync(dest);
      assert.equal(st.mode & 0o777, 0o604);
      assert.notEqual(st.uid, 0);
      const json = JSON.parse((await porthole(['--json', 'cp', local, `${guest.target}:${dest}`])).stdout.toString());
      assert.deepEqual([json.ok, json.size, json.sha256], [true, data.length, sha(data)]);
    });

    it('copies from stdin and out to a file or stdout', async () => {
      const dest = join(guest.root, 'from-stdin.txt');
      assert.equal((await porthole(['cp', '-', `${guest.target}:${dest}`], { stdin: 'piped\n' })).code, 0);
      assert.equal(readFileSync(dest, 'utf8'), 'piped\n');
      const out = await porthole(['cp', `${guest.target}:${dest}`, '-']);
      assert.equal(out.code, 0);
      assert.equal(out.stdout.toString(), 'piped\n');
      const local = join(guest.dir, 'back.txt');
      const r = await porthole(['--json', 'cp', `${guest.target}:${dest}`, local]);
      assert.equal(JSON.parse(r.stdout.toString()).sha256, sha(Buffer.from('piped\n')));
      assert.equal(readFileSync(local, 'utf8'), 'piped\n');
    });

    it('exits 1 naming the cause for a missing file, 2 for a bad --mode', async () => {
      const missing = await porthole(['cp', `${guest.target}:${join(guest.root, 'nope')}`, join(guest.dir, 'x')]);
      assert.equal(missing.code, 1);
      assert.match(missing.stderr, /nope/);
      const json = await porthole(['--json', 'cp', `${guest.target}:${join(guest.root, 'nope')}`, join(guest.dir, 'x')]);
      assert.equal(JSON.parse(json.stdout.toString()).error.code, 'NOT_FOUND');
      const mode = await porthole(['cp', join(guest.dir, 'big.bin'), `${guest.target}:/tmp/x`, '--mode', 'rw-r--r--']);
      assert.equal(mode.code, 2);
      assert.match(mode.stderr, /option '--mode <octal>' argument 'rw-r--r--' is invalid\. expected octal permission bits like 0644/);
    });
  });

  describe('exit codes of refusals', () => {
    it('3 when no VM answers at the target', async () => {
      const r = await porthole(['--timeout', '1', 'ping', `unix:${join(guest.dir, 'no-such.sock')}`]);
      assert.equal(r.code, 3);
      assert.match(r.stderr, /no-such\.sock/);
    });

    it('4 when the guest owner\'s policy refuses, naming the rule', async () => {
      const r = await porthole(['cp', `${guest.target}:${join(guest.root, 'secret', 'key')}`, '-']);
      assert.equal(r.code, 4);
      assert.match(r.stderr, /disabled by the guest's owner/);
      const locked = await startGuest((c) => { c.exec.enabled = false; });
      try {
        const e = await porthole(['--json', 'exec', locked.target, '--', 'true'], { stdin: '' });
        assert.equal(e.code, 4);
        const err = JSON.parse(e.stdout.toString()).error;
        assert.equal(err.code, 'POLICY_DENIED');
        assert.match(err.message, /disabled by the guest's owner: exec/);
      } finally {
        await locked.stop();
      }
    });
  });
});
