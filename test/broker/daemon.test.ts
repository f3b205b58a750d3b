import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, ExecTask } from '@porthole/broker';
import { CreditLedger } from '@porthole/broker/serve/relay';
import { Guest, porthole, serve, Serving, startGuest } from './guest';
import { readLines, unixRequest } from './http';

const TOKEN = 'daemon-test-token-0123456789';
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** VmRSS of a process, in bytes. */
function rss(pid: number): number {
  const kib = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  return Number(kib) * 1024;
}

async function collect(task: ExecTask): Promise<{ code: number | null; stdout: string; stderr: string; cancelled: boolean }> {
  let stdout = '';
  let stderr = '';
  task.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  task.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exit = await task.exit;
  return { code: exit.code, stdout, stderr, cancelled: exit.cancelled };
}

/**
 * A shell command that ends only once every one of `names` has touched its mark in `dir`: the
 * commands that use it can only all end if they all ran at the same time.
 */
function rendezvous(dir: string, name: string, names: string[]): string {
  const waiting = names.map((n) => `[ -e ${dir}/${n} ]`).join(' && ');
  return `touch ${dir}/${name}; for i in $(seq 400); do if ${waiting}; then echo ${name} met the others; exit 0; fi; sleep 0.05; done; echo ${name} was alone >&2; exit 1`;
}

describe('broker daemon: porthole serve owns the VM\'s channel; CLI, REST and library users share it', function () {
  this.timeout(120000);
  let guest: Guest;
  let daemon: Serving;
  let sock: string;
  let tcp: string;

  const api = (path: string, init: RequestInit & { json?: unknown } = {}) => fetch(`${tcp}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${TOKEN}`, ...(init.json !== undefined ? { 'content-type': 'application/json' } : {}) },
    body: init.json !== undefined ? JSON.stringify(init.json) : init.body,
  });
  const health = async () => (await (await api('/v1/health')).json()) as { vms: number; clients: number; running: number };
  const startDaemon = async (extra: string[] = []) => {
    const tokenFile = join(guest.dir, 'token');
    writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
    const d = await serve(['--listen', `unix:${sock}`, '--listen', 'tcp:127.0.0.1:0', '--token-file', tokenFile, '--journal', join(guest.dir, 'journal.bin'), ...extra]);
    tcp = d.addresses[1];
    return d;
  };

  before(async () => {
    guest = await startGuest();
    sock = join(guest.dir, 'broker.sock');
    daemon = await startDaemon();
  });
  after(async () => {
    await daemon?.stop();
    await guest?.stop();
  });

  it('runs a CLI command, a REST task and a library user\'s command in the same VM at the same time, over one session', async () => {
    const marks = join(guest.root, 'marks');
    mkdirSync(marks);
    const names = ['cli', 'rest', 'lib'];
    const lib = await connect(guest.target, { broker: sock });
    try {
      assert.equal(lib.route.via, 'daemon');
      const cli = porthole(['--verbose', '--broker-socket', sock, 'exec', guest.target, '--', 'sh', '-c', rendezvous(marks, 'cli', names)]);
      const res = await api('/v1/tasks/exec', { method: 'POST', json: { target: guest.target, shell: rendezvous(marks, 'rest', names) } });
      assert.equal(res.status, 202, await res.clone().text());
      const { id } = (await res.json()) as { id: string };
      const library = collect(lib.exec({ shell: rendezvous(marks, 'lib', names) }));
      const lines = await readLines(await api(`/v1/tasks/${id}/output?encoding=utf8`));
      const [c, l] = await Promise.all([cli, library]);

      assert.equal(c.code, 0, c.stderr);
      assert.equal(c.stdout.toString(), 'cli met the others\n');
      assert.match(c.stderr, new RegExp(`porthole: through the broker daemon at ${sock}\\n`));
      assert.deepEqual([l.code, l.stdout], [0, 'lib met the others\n']);
      const end = lines.pop()!;
      assert.equal(end.task!.status, 'done', JSON.stringify(end));
      assert.equal(lines.map((x) => x.text).join(''), 'rest met the others\n');
      // One session to the VM, whoever asked.
      assert.equal((await health()).vms, 1);
    } finally {
      lib.close();
    }
  });

  it('gives a library user every API feature through the daemon: info, exec with streamed stdin, cancel, copies both ways', async () => {
    const vm = await connect(guest.target, { broker: sock });
    try {
      const info = await vm.info();
      assert.match(info.hello!.softwareVersion!, /^porthole-agent /);
      // The client sees the agent's own hello, as it would directly.
      assert.deepEqual([vm.hello?.softwareVersion, vm.hello?.hostname, vm.hello?.capabilities], [info.hello?.softwareVersion, info.hello?.hostname, info.hello?.capabilities]);

      const cat = vm.exec(['sha256sum'], { stdin: true });
      const input = randomBytes(3 * 1024 * 1024 + 17);
      cat.stdin.end(input);
      const summed = await collect(cat);
      assert.equal(summed.stdout.split(' ')[0], sha256(input));

      const first = Date.now();
      const live = vm.exec({ shell: 'echo first; sleep 2; echo second' });
      const firstLine = await new Promise<number>((resolve) => live.stdout.once('data', () => resolve(Date.now() - first)));
      assert.ok(firstLine < 1500, `the first line took ${firstLine} ms: output is not streamed live`);
      assert.equal((await live.exit).code, 0);

      const sleeper = vm.exec(['sleep', '30']);
      await sleeper.started;
      sleeper.cancel();
      const stopped = await sleeper.exit;
      assert.ok(stopped.cancelled && stopped.signal, JSON.stringify(stopped));

      const content = randomBytes(9 * 1024 * 1024 + 3);
      const path = join(guest.root, 'copied.bin');
      const up = await vm.installFile(content, { path, mode: 0o600 }).result;
      assert.equal(up.sha256, sha256(content));
      assert.equal(statSync(path).mode & 0o777, 0o600);
      const read = vm.readFile(path);
      const parts: Buffer[] = [];
      read.data.on('data', (d: Buffer) => parts.push(d));
      const back = await read.result;
      assert.equal(back.sha256, sha256(content));
      assert.ok(Buffer.concat(parts).equals(content));
    } finally {
      vm.close();
    }
  });

  it('holds back a command whose client stops reading, buffering no more in the daemon than the credit it passed on', async () => {
    const total = 64 * 1024 * 1024;
    const before = rss(daemon.pid);
    let cli = 0;
    let received = 0;
    let flowing!: () => void;
    const started = new Promise<void>((resolve) => (flowing = resolve));
    const run = porthole(['--broker-socket', sock, 'exec', guest.target, '--', 'head', '-c', String(total), '/dev/zero'], {
      onSpawn: (pid) => (cli = pid),
      onStdout: (b) => { received += b.length; flowing(); },
    });
    await started;
    // The client stops reading anything, its socket to the daemon included.
    process.kill(cli, 'SIGSTOP');
    await sleep(5000);
    const stalled = rss(daemon.pid);
    process.kill(cli, 'SIGCONT');
    // What it may hold: the client's window (4 MiB) and a socket's queue, and the garbage of moving them.
    assert.ok(stalled - before < 24 * 2 ** 20, `the daemon grew by ${((stalled - before) / 2 ** 20).toFixed(1)} MiB while its client read nothing`);
    const r = await run;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(received, total);
  });

  it('stops a command in the guest when its client goes away, as a lost channel would', async () => {
    const marker = join(guest.root, 'still-running');
    const vm = await connect(guest.target, { broker: sock });
    const orphan = vm.exec({ shell: `sleep 3; touch ${marker}` });
    await orphan.started;
    vm.close();
    await orphan.exit.catch(() => undefined);
    const observer = await connect(guest.target, { broker: sock });
    try {
      for (let i = 0; i < 50 && (await observer.info()).activeExecs > 0; i++) await sleep(100);
      assert.equal((await observer.info()).activeExecs, 0);
      await sleep(3500);
      assert.ok(!existsSync(marker), 'the command went on after its client left');
    } finally {
      observer.close();
    }
  });

  it('resumes a library user\'s transfer after the daemon is killed and started again', async () => {
    const vm = await connect(guest.target, { broker: sock, timeoutMs: 30000 });
    try {
      const content = randomBytes(96 * 1024 * 1024);
      const task = vm.installFile(content, { path: join(guest.root, 'resumed.bin') });
      let restarted: Promise<void> | undefined;
      task.on('progress', ({ bytes }: { bytes: number }) => {
        restarted ??= bytes > 16 * 2 ** 20 ? (async () => {
          await daemon.stop('SIGKILL');
          daemon = await startDaemon();
        })() : undefined;
      });
      const result = await task.result;
      await restarted;
      assert.ok(result.resumedFrom > 0, 'the transfer started over instead of resuming');
      assert.equal(result.sha256, sha256(content));
      assert.equal(sha256(readFileSync(join(guest.root, 'resumed.bin'))), sha256(content));
    } finally {
      vm.close();
    }
  });
});

describe('broker daemon: sessions on demand, access to its socket, no daemon', function () {
  this.timeout(60000);
  let guest: Guest;
  before(async () => { guest = await startGuest(); });
  after(async () => guest.stop());

  it('opens a VM\'s session when a client first asks and closes it once unused for --idle-timeout', async () => {
    const sock = join(guest.dir, 'idle.sock');
    const daemon = await serve(['--listen', `unix:${sock}`, '--idle-timeout', '1', '--journal', join(guest.dir, 'idle.bin')]);
    try {
      const vms = async () => ((await unixRequest(sock, 'GET', '/v1/health')).json as { vms: number }).vms;
      assert.equal(await vms(), 0);
      const a = await connect(guest.target, { broker: sock });
      const b = await connect(guest.target, { broker: sock });
      const agent = a.hello?.softwareVersion;
      assert.equal(await vms(), 1);
      a.close();
      await sleep(1500);
      assert.equal(await vms(), 1, 'closed while a client still used it');
      b.close();
      await sleep(1500);
      assert.equal(await vms(), 0);
      // And a direct client gets the channel again.
      const direct = await connect(guest.target, { broker: false });
      assert.equal((await direct.info()).hello?.softwareVersion, agent);
      direct.close();
    } finally {
      await daemon.stop();
    }
  });

  it('keeps its Unix socket to its user (0600) or a group (--socket-group, 0660); TCP wants the token for the protocol too', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'porthole-daemon-access-'));
    chmodSync(dir, 0o755);
    const sock = join(dir, 'broker.sock');
    const tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, TOKEN, { mode: 0o600 });
    // As another user: nobody (uid 65534) with the given group, and no other.
    const dial = (gid: number) => new Promise<string>((resolve) => {
      const child = spawn('setpriv', [`--reuid=65534`, `--regid=${gid}`, '--clear-groups', process.execPath, '-e',
        `require('net').connect(${JSON.stringify(sock)}).on('connect', () => { console.log('connected'); process.exit(0); }).on('error', (e) => console.log(e.code))`]);
      let out = '';
      child.stdout.on('data', (b: Buffer) => (out += b.toString()));
      child.on('close', () => resolve(out.trim()));
    });
    try {
      let daemon = await serve(['--listen', `unix:${sock}`, '--journal', join(dir, 'j.bin')]);
      assert.equal(statSync(sock).mode & 0o777, 0o600);
      assert.equal(await dial(65534), 'EACCES');
      await daemon.stop();

      daemon = await serve(['--listen', `unix:${sock}`, '--socket-group', 'nogroup', '--listen', 'tcp:127.0.0.1:0', '--token-file', tokenFile, '--journal', join(dir, 'j.bin')]);
      try {
        const st = statSync(sock);
        assert.deepEqual([st.mode & 0o777, st.gid], [0o660, 65534]);
        assert.equal(await dial(65534), 'connected');
        assert.equal(await dial(4242), 'EACCES');
        // The Unix socket needs no token; on TCP the protocol upgrade does.
        const upgrade = (headers: Record<string, string>) => new Promise<number>((resolve, reject) => {
          const url = new URL(daemon.addresses[1]);
          const req = http.request({ host: url.hostname, port: url.port, path: `/v1/channel?target=${encodeURIComponent(guest.target)}`, headers: { connection: 'Upgrade', upgrade: 'porthole', ...headers } });
          req.on('upgrade', (res, socket) => { socket.destroy(); resolve(res.statusCode!); });
          req.on('response', (res) => { res.resume(); resolve(res.statusCode!); });
          req.on('error', reject);
          req.end();
        });
        assert.equal(await upgrade({}), 401);
        assert.equal(await upgrade({ authorization: `Bearer ${TOKEN}` }), 101);
        const viaSocket = await connect(guest.target, { broker: sock });
        assert.equal(viaSocket.route.via, 'daemon');
        viaSocket.close();
      } finally {
        await daemon.stop();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('without a daemon, the CLI connects directly and says so; a daemon socket it was told about must be there', async () => {
    const direct = await porthole(['--verbose', 'exec', guest.target, '--', 'echo', 'direct']);
    assert.equal(direct.code, 0, direct.stderr);
    assert.equal(direct.stdout.toString(), 'direct\n');
    assert.match(direct.stderr, new RegExp(`porthole: directly to ${guest.target} \\(no broker daemon at /run/porthole/broker.sock\\)`));

    const missing = join(guest.dir, 'no-daemon.sock');
    const named = await porthole(['info', guest.target], { env: { PORTHOLE_BROKER_SOCKET: missing } });
    assert.equal(named.code, 3, named.stderr);
    assert.match(named.stderr, new RegExp(`no broker daemon listening on ${missing}`));
    const forced = await porthole(['--verbose', '--direct', 'info', guest.target], { env: { PORTHOLE_BROKER_SOCKET: missing } });
    assert.equal(forced.code, 0, forced.stderr);
    assert.match(forced.stderr, /directly to .* \(asked for\)/);
  });

  it('answers an unreachable VM through the daemon as the CLI would directly: exit 3, naming the socket', async () => {
    const sock = join(guest.dir, 'unreach.sock');
    const daemon = await serve(['--listen', `unix:${sock}`, '--journal', join(guest.dir, 'unreach.bin')]);
    try {
      const gone = `unix:${join(guest.dir, 'no-vm.sock')}`;
      const t0 = Date.now();
      const r = await porthole(['--timeout', '2', '--broker-socket', sock, 'info', gone]);
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr, /no such socket: .*no-vm\.sock/);
      assert.ok(Date.now() - t0 < 15000, 'the daemon\'s final answer was retried');
    } finally {
      await daemon.stop();
    }
  });
});

describe('broker daemon: credit passes through the relay exactly', () => {
  it('converts grants message by message between envelopes of different sizes', () => {
    const ledger = new CreditLedger();
    // Three chunks that grew by 1 byte each on the way (a longer stream id), then a small one.
    for (let i = 0; i < 3; i++) ledger.forwarded(131084, 131085);
    ledger.forwarded(20, 22);
    assert.equal(ledger.grant(131085), 131084);
    assert.equal(ledger.grant(100), 0, 'part of a message: nothing yet');
    assert.equal(ledger.grant(131085 * 2 - 100 + 22), 131084 * 2 + 20);
    // A receiver that widens its window beyond what was sent: passed on as it is.
    assert.equal(ledger.grant(4096), 4096);
  });
});
