import { strict as assert } from 'node:assert';
import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { v1, PortholeError, Session } from '@porthole/protocol';
import { UnixSocketConnector } from '@porthole/transport';
import { exec, sha256, writeFile } from './client';
import { AGENT_TUNING_ENV } from '@porthole/agent';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const kib = (field: string, pid: number) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);

/**
 * The agent as it ships: the esbuild bundle, run by plain node from a
 * directory without node_modules, as a separate process.
 */
describe('agent: the bundled executable', function () {
  this.timeout(60000);
  let dir: string;
  let bundle: string;
  let agent: ChildProcess | undefined;
  let listener: UnixSocketConnector | undefined;
  let session: Session | undefined;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-agent-exe-'));
    bundle = join(dir, 'porthole-agent.cjs');
    execFileSync(process.execPath, [join(__dirname, '../../packages/agent/scripts/bundle.mjs'), bundle]);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));
  afterEach(() => {
    session?.close();
    listener?.close();
    if (agent && agent.exitCode === null) agent.kill('SIGKILL');
    agent = session = listener = undefined;
  });

  const run = (...args: string[]) => spawnSync(process.execPath, [bundle, ...args], { cwd: dir, encoding: 'utf8' });

  it('--version and --check-config', () => {
    assert.match(run('--version').stdout, /^porthole-agent \d+\.\d+\.\d+/);
    const good = join(dir, 'good.conf');
    writeFileSync(good, '[exec]\nenabled = false\nusers = ["app"]\ngroups = ["adm"]\nenv_allow = ["LD_LIBRARY_PATH"]\n[session]\nmax_streams = 16\n');
    const ok = run('--check-config', '--config', good);
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /exec: +OFF; users \["app"\]; groups each user's own \+ \["adm"\]/);
    assert.match(ok.stdout, /env_allow \["LD_LIBRARY_PATH"\]; refused unless allowed: LD_\* /);
    assert.match(ok.stdout, /session: +max_streams 16; max_open_files 64; peer_timeout_seconds 30/);
    const example = run('--check-config', '--config', join(__dirname, '../../installers/agent.conf.example'));
    assert.equal(example.status, 0, example.stderr);
    const missing = run('--check-config', '--config', join(dir, 'none.conf'));
    assert.equal(missing.status, 0);
    assert.match(missing.stdout, /not found: defaults/);
    const bad = join(dir, 'bad.conf');
    writeFileSync(bad, '[exec]\nmax_concurrent = "many"\n');
    const refused = run('--check-config', '--config', bad);
    assert.equal(refused.status, 1);
    assert.match(refused.stderr, /exec\.max_concurrent: expected a whole number/);
    assert.match(run('--channel', 'carrier-pigeon').stderr, /bad --channel "carrier-pigeon"/);
    const loud = run('--log-level', 'loud', '--config', good);
    assert.equal(loud.status, 1);
    assert.match(loud.stderr, /bad log level "loud"/);
    assert.match(run('--help').stdout, /default:\s+"virtio:org\.porthole\.agent\.0"/);
  });

  async function startAgent(configText: string, env: NodeJS.ProcessEnv = process.env, launcher: string[] = []) {
    const conf = join(dir, 'agent.conf');
    writeFileSync(conf, `[transfers]\nstate_dir = "${join(dir, 'state')}"\n${configText}`);
    const sock = join(dir, 'agent.sock');
    listener = new UnixSocketConnector(sock, { listen: true });
    const accepted = listener.connect();
    const logFile = join(dir, 'audit.log');
    writeFileSync(logFile, '');
    const argv = [...launcher, process.execPath, bundle, '--channel', `unix:${sock}`, '--config', conf, '--log-file', logFile];
    agent = spawn(argv[0], argv.slice(1), { cwd: dir, env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    agent.stderr!.on('data', (b: Buffer) => { stderr += b.toString(); });
    session = new Session(await accepted, { role: 'broker', hello: { softwareVersion: 'test-broker' }, keepaliveIntervalMs: 0 });
    return { conf, logFile, hello: await session.ready(10000), session, pid: agent.pid!, stderr: () => stderr };
  }

  it("runs with its launcher's environment, and the commands it starts do not inherit it", async () => {
    const launcherPath = join(__dirname, '../../installers/porthole-agent-env.sh');
    const launcher = readFileSync(launcherPath, 'utf8');
    const tuned = [...launcher.matchAll(/^\s*(?::\s+"\$\{|export\s+)([A-Za-z_0-9]+)=/gm)].map((m) => m[1]);
    assert.deepEqual([...new Set(tuned)].sort(), [...AGENT_TUNING_ENV].sort(), 'the launcher sets exactly what the agent keeps from commands');
    // The unit, and guests without systemd (`porthole agent install`), start the agent through it.
    const unit = readFileSync(join(__dirname, '../../installers/systemd/porthole-agent.service'), 'utf8');
    assert.match(unit, /^ExecStart=\/usr\/lib\/porthole\/porthole-agent-env \/usr\/sbin\/porthole-agent /m);
    assert.doesNotMatch(unit, /^Environment=/m, 'the launcher, not the unit, sets the environment');
    const fallback = readFileSync(join(__dirname, '../../packages/broker/src/agent-install.ts'), 'utf8').split('\n').find((l) => l.includes('setsid'))!;
    assert.match(fallback, /setsid \$launcher \$\{GUEST_AGENT\} /);
    // This host is no emulated CPU: the test gives OPENSSL_ia32cap as the launcher sets it in a TCG guest (a value it is given, it keeps).
    const ia32cap = '~0x1000020000000000:~0x20000128';
    const a = await startAgent('', { ...process.env, NODE_OPTIONS: undefined, MALLOC_MMAP_THRESHOLD_: undefined, OPENSSL_ia32cap: ia32cap, PORTHOLE_TEST_MARK: 'inherited' }, ['/bin/sh', launcherPath]);
    const own = readFileSync(`/proc/${a.pid}/environ`, 'utf8').split('\0');
    for (const setting of ['NODE_OPTIONS=--jitless', 'MALLOC_MMAP_THRESHOLD_=65536', `OPENSSL_ia32cap=${ia32cap}`]) assert.ok(own.includes(setting), `the agent runs with ${setting}`);
    // V8 says so when --jitless takes WebAssembly away: the flag took effect in the agent's process.
    assert.match(a.stderr(), /disabling flag --expose_wasm/);
    const r = await exec(a.session, { argv: [Buffer.from('/usr/bin/env')] });
    assert.equal(r.exit.code, 0);
    const env = r.stdout.toString().split('\n');
    assert.ok(env.includes('PORTHOLE_TEST_MARK=inherited'), 'the rest of the environment is inherited');
    for (const name of AGENT_TUNING_ENV) assert.ok(!env.some((l) => l.startsWith(`${name}=`)), `${name} reached the command`);
    const node = await exec(a.session, { argv: [Buffer.from(process.execPath), Buffer.from('-p'), Buffer.from('typeof WebAssembly')] });
    assert.equal(node.stdout.toString().trim(), 'object', 'a Node command keeps its JIT');
  });

  it('streams a 1 GiB output flood with bounded memory', async function () {
    this.timeout(300000);
    const a = await startAgent('');
    const baseline = kib('VmRSS', a.pid);
    let peak = 0;
    const sampler = setInterval(() => { peak = Math.max(peak, kib('VmRSS', a.pid)); }, 100);
    let received = 0;
    const started = Date.now();
    try {
      const r = await exec(a.session, { shellCommand: 'head -c 1073741824 /dev/zero' }, {
        discardOutput: true,
        onOutput: (data) => { received += data.length; },
      });
      assert.equal(r.exit.code, 0);
    } finally {
      clearInterval(sampler);
    }
    const hwm = kib('VmHWM', a.pid);
    const seconds = (Date.now() - started) / 1000;
    console.log(`      agent RSS: ${Math.round(baseline / 1024)} MiB idle, ${Math.round(peak / 1024)} MiB sampled peak, ${Math.round(hwm / 1024)} MiB high-water; ` +
      `1 GiB in ${seconds.toFixed(1)} s (${Math.round(1024 / seconds)} MiB/s)`);
    assert.equal(received, 1024 ** 3);
    assert.ok(hwm < 200 * 1024, `agent high-water RSS ${hwm} KiB`);
  });

  it('takes a 512 MiB file injection with bounded memory', async function () {
    this.timeout(300000);
    const a = await startAgent('');
    const content = Buffer.alloc(512 * 1024 * 1024);
    for (let i = 0; i < content.length; i += 4096) content.writeUInt32LE(i, i);
    const target = join(dir, 'big.bin');
    const started = Date.now();
    const result = await writeFile(a.session, { path: Buffer.from(target), size: content.length, sizeKnown: true }, content);
    const seconds = (Date.now() - started) / 1000;
    const hwm = kib('VmHWM', a.pid);
    console.log(`      agent RSS high-water ${Math.round(hwm / 1024)} MiB; 512 MiB written in ${seconds.toFixed(1)} s (${Math.round(512 / seconds)} MiB/s)`);
    assert.equal(result.sha256, sha256(content));
    assert.equal(statSync(target).size, content.length);
    assert.ok(hwm < 200 * 1024, `agent high-water RSS ${hwm} KiB`);
    // That transfer started the agent's hashing thread; the next one is hashed there.
    assert.match(readFileSync(a.logFile, 'utf8'), /"message":"hashing thread started"/);
    const next = content.subarray(0, 32 * 1024 * 1024);
    assert.equal((await writeFile(a.session, { path: Buffer.from(target), size: next.length, sizeKnown: true }, next)).sha256, sha256(next));
    assert.equal(statSync(target).size, next.length);
    rmSync(target);
  });

  it('announces its policy, reloads it on SIGHUP and keeps it when the new file is invalid, logs to its file', async () => {
    const a = await startAgent('[file_read]\nenabled = false\n[exec]\nmax_concurrent = 5\n');
    assert.ok(!a.hello.capabilities.includes(v1.Capability.CAPABILITY_FILE_READ));
    assert.ok(a.hello.capabilities.includes(v1.Capability.CAPABILITY_EXEC));
    assert.equal(a.hello.limits?.maxConcurrentExecs, 5);
    const target = join(dir, 'written.txt');
    await writeFile(a.session, { path: Buffer.from(target) }, Buffer.from('through the bundle'));
    assert.equal(readFileSync(target, 'utf8'), 'through the bundle');

    writeFileSync(a.conf, `[transfers]\nstate_dir = "${join(dir, 'state')}"\n[exec]\nenabled = false\n`);
    agent!.kill('SIGHUP');
    const logged = async (re: RegExp) => {
      for (let i = 0; i < 100 && !re.test(readFileSync(a.logFile, 'utf8')); i++) await sleep(50);
      return readFileSync(a.logFile, 'utf8');
    };
    assert.match(await logged(/config reloaded/), /config reloaded/);
    await assert.rejects(exec(a.session, { argv: [Buffer.from('true')] }), (e: PortholeError) => e.rule === 'exec.enabled = false');

    writeFileSync(a.conf, '[exec]\nenabled = maybe\n');
    agent!.kill('SIGHUP');
    assert.match(await logged(/config reload failed/), /keeping the previous policy/);
    await assert.rejects(exec(a.session, { argv: [Buffer.from('true')] }), (e: PortholeError) => e.rule === 'exec.enabled = false');

    const lines = readFileSync(a.logFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const write = lines.find((l) => l.request === 'fileWrite');
    assert.equal(write?.path, target);
    assert.equal(write?.size, 18);
    assert.ok(!readFileSync(a.logFile, 'utf8').includes('through the bundle'), 'no content in the log');

    // A clean stop ends by the signal itself (see main.ts), as systemd and shells expect of a daemon.
    const exited = new Promise<[number | null, string | null]>((r) => agent!.once('exit', (code, signal) => r([code, signal])));
    agent!.kill('SIGTERM');
    assert.deepEqual(await exited, [null, 'SIGTERM']);
    assert.match(await logged(/"stopping"/), /"signal":"SIGTERM"/);
  });
});
