// The shipped pieces end to end over xenstore: the bundled agent as its own
// process (`porthole-agent --channel xen:<guest socket>`, the test xenstored
// standing in for /dev/xen/xenbus), the `porthole` CLI as dom0 (`xen:<domid>`
// with XENSTORED_PATH), and Nova-style requests written with xenstore-write as
// Nova's xenapi agent plugin writes them.
import { strict as assert } from 'node:assert';
import { ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Fixture, startServer } from './server-fixture';

const repo = join(__dirname, '../..');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: { ...process.env, ...env }, timeout: 60000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('porthole-agent --channel xen with the porthole CLI and Nova-style requests', function () {
  this.timeout(120000);
  let dir: string;
  let bundle: string;
  let fx: Fixture;
  let agent: ChildProcess | undefined;
  let root: string;
  let conf: string;
  let logFile: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-xen-agent-'));
    bundle = join(dir, 'porthole-agent.cjs');
    execFileSync(process.execPath, [join(repo, 'packages/agent/scripts/bundle.mjs'), bundle]);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  beforeEach(async () => {
    fx = await startServer();
    root = mkdtempSync(join(dir, 'root-'));
    conf = join(root, 'agent.conf');
    logFile = join(root, 'audit.log');
    mkdirSync(join(root, 'guest'));
    writeConfig('');
    agent = spawn(process.execPath, [bundle, '--channel', `xen:${fx.guestSocket}`, '--config', conf, '--log-file', logFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    agent.stderr!.resume();
  });
  afterEach(async () => {
    if (agent && agent.exitCode === null) {
      agent.kill('SIGTERM');
      await new Promise((r) => agent!.once('exit', r));
    }
    await fx.cleanup();
  });

  function writeConfig(extra: string): void {
    writeFileSync(conf, `[file_write]\nallow = ["${join(root, 'guest')}"]\n[transfers]\nstate_dir = "${join(root, 'state')}"\n${extra}`);
  }

  const porthole = (...args: string[]) =>
    run(process.execPath, ['--conditions=porthole-src', '--import', 'tsx', join(repo, 'packages/broker/src/cli.ts'), '--timeout', '20', ...args], { XENSTORED_PATH: fx.socket });
  const xs = (tool: string, ...args: string[]) => run(tool, ['-s', ...args], { XENSTORED_PATH: fx.socket });
  const dom = `/local/domain/5`;

  /** What Nova's plugin does: xenstore-write the request, then poll data/guest/<id> until the agent answered. */
  async function novaCall(value: string, timeoutMs = 15000): Promise<{ returncode: string; message: string }> {
    const id = randomUUID();
    const w = await xs('xenstore-write', `${dom}/data/host/${id}`, value);
    assert.equal(w.code, 0, w.stderr);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const r = await xs('xenstore-read', `${dom}/data/guest/${id}`);
      if (r.code === 0) {
        assert.equal((await xs('xenstore-exists', `${dom}/data/host/${id}`)).code, 1, 'the agent deleted the request');
        return JSON.parse(r.stdout) as { returncode: string; message: string };
      }
      await sleep(100);
    }
    throw new Error(`no answer at data/guest/${id} within ${timeoutMs} ms`);
  }
  const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');

  /** SIGHUP, then wait for the agent's n-th "config reloaded" line. */
  async function reload(n: number): Promise<void> {
    agent!.kill('SIGHUP');
    const count = () => readFileSync(logFile, 'utf8').split('"message":"config reloaded"').length - 1;
    for (let i = 0; i < 100 && count() < n; i++) await sleep(50);
    assert.equal(count(), n, 'the agent reloaded its config');
  }

  it('the CLI as dom0: info, cp both ways, exec with its output and exit code, policy refusal exit 4', async () => {
    const i = await porthole('--json', 'info', 'xen:5');
    assert.equal(i.code, 0, i.stderr);
    const infoJson = JSON.parse(i.stdout) as { ok: boolean; agent: string; capabilities: string[] };
    assert.match(infoJson.agent, /^porthole-agent /);
    assert.ok(infoJson.capabilities.includes('file_write'));

    const local = join(root, 'local.bin');
    const content = randomBytes(3 * 1024 * 1024 + 5);
    writeFileSync(local, content);
    const target = join(root, 'guest/dir/copy.bin');
    const put = await porthole('cp', local, `xen:5:${target}`, '--mode', '0640', '--mkdir');
    assert.equal(put.code, 0, put.stderr);
    assert.ok(readFileSync(target).equals(content));
    assert.equal(statSync(target).mode & 0o7777, 0o640);
    const back = join(root, 'back.bin');
    const get = await porthole('cp', `xen:5:${target}`, back);
    assert.equal(get.code, 0, get.stderr);
    assert.ok(readFileSync(back).equals(content));

    const ex = await porthole('exec', 'xen:5', '--', 'sh', '-c', 'echo out; echo err >&2; exit 3');
    assert.equal(ex.code, 3, ex.stderr);
    assert.equal(ex.stdout, 'out\n');
    assert.match(ex.stderr, /err\n/);

    const denied = await porthole('cp', local, `xen:5:${join(root, 'outside.bin')}`);
    assert.equal(denied.code, 4, denied.stderr);
    assert.match(denied.stderr, /file_write\.allow/);
    assert.ok(!existsSync(join(root, 'outside.bin')));
  });

  it('a missing xenstored is named as the cause (exit 3)', async () => {
    const r = await run(process.execPath, ['--conditions=porthole-src', '--import', 'tsx', join(repo, 'packages/broker/src/cli.ts'), '--timeout', '1', 'info', 'xen:5'],
      { XENSTORED_PATH: join(dir, 'no-such-socket') });
    assert.equal(r.code, 3);
    assert.match(r.stderr, /no xenstored socket at .*no-such-socket/);
  });

  it('Nova requests: version, features, file_inject and legacy injectfile through the atomic write path', async () => {
    const version = await novaCall('{"name": "version", "value": "agent"}');
    assert.equal(version.returncode, '0');
    assert.match(version.message, /^\d+\.\d+\.\d+/);
    const features = await novaCall('{"name": "features", "value": ""}');
    assert.deepEqual(features, { returncode: '0', message: 'version,features,file_inject,injectfile' });

    // Path and content as separate base64 values; the content may hold anything, commas included.
    const path = join(root, 'guest/etc/motd');
    const text = 'hello, from dom0,\nwith commas\n';
    const fresh = await novaCall(JSON.stringify({ name: 'file_inject', value: { b64_path: b64(path), b64_file: b64(text) } }));
    assert.equal(fresh.returncode, '0', fresh.message);
    assert.equal(readFileSync(path, 'utf8'), text);
    assert.equal(statSync(path).mode & 0o7777, 0o644);

    // Legacy: base64 of "path,contents", split at the first comma.
    const legacy = join(root, 'guest/legacy.conf');
    const old = await novaCall(JSON.stringify({ name: 'injectfile', value: b64(`${legacy},a=1,b=2\n`) }));
    assert.equal(old.returncode, '0', old.message);
    assert.equal(readFileSync(legacy, 'utf8'), 'a=1,b=2\n');
    // Path bytes are kept exact; the reply stays parseable after xenstore-read's escaping.
    const accented = join(root, 'guest/café.txt');
    const utf8 = await novaCall(JSON.stringify({ name: 'file_inject', value: { b64_path: b64(accented), b64_file: b64('crème') } }));
    assert.equal(utf8.returncode, '0', utf8.message);
    assert.equal(readFileSync(accented, 'utf8'), 'crème');
    assert.deepEqual(readdirSync(join(root, 'guest')).sort(), ['café.txt', 'etc', 'legacy.conf'], 'no temporaries left');

    const audit = readFileSync(logFile, 'utf8');
    assert.match(audit, /"request":"nova:file_inject"/);
    assert.ok(!audit.includes('with commas') && !audit.includes(b64(text)), 'no content in the audit log');
  });

  it('Nova requests that are refused or not supported get a clear answer; nothing is written', async () => {
    const outside = join(root, 'outside.txt');
    const denied = await novaCall(JSON.stringify({ name: 'file_inject', value: { b64_path: b64(outside), b64_file: b64('x') } }));
    assert.equal(denied.returncode, '403');
    assert.match(denied.message, /outside the prefixes the guest's owner allows \(file_write\.allow = /);
    assert.ok(!existsSync(outside));

    const password = await novaCall('{"name": "password", "value": "abc"}');
    assert.equal(password.returncode, '404');
    assert.match(password.message, /does not support password/);
    // The names Nova's dom0 plugin writes (its key_init call sends {"name": "keyinit", "value": <pub>}).
    for (const name of ['keyinit', 'resetnetwork', 'agentupdate', 'kmsactivate']) {
      const answer = await novaCall(`{"name": "${name}", "value": "1234"}`);
      assert.equal(answer.returncode, '404');
      assert.match(answer.message, new RegExp(`does not support ${name} \\(`));
    }
    assert.deepEqual(await novaCall('{"name": "frobnicate", "value": ""}'), { returncode: '404', message: "No such agent command 'frobnicate'" });

    const badB64 = await novaCall(JSON.stringify({ name: 'file_inject', value: { b64_path: b64(join(root, 'guest/x')), b64_file: 'not base64!' } }));
    assert.deepEqual(badB64, { returncode: '500', message: 'b64_file is not valid base64' });
    const noComma = await novaCall(JSON.stringify({ name: 'injectfile', value: b64('no-comma-here') }));
    assert.equal(noComma.returncode, '500');
    assert.match(noComma.message, /no comma/);
    assert.equal((await novaCall('not json')).returncode, '500');
    assert.deepEqual(readdirSync(join(root, 'guest')), []);
  });

  it('nova.enabled = false (applied with SIGHUP) leaves data/host alone; file_write off drops injection from features', async () => {
    assert.equal((await novaCall('{"name": "version", "value": ""}')).returncode, '0');
    writeConfig('[nova]\nenabled = false\n');
    await reload(1);
    const id = randomUUID();
    await xs('xenstore-write', `${dom}/data/host/${id}`, '{"name": "version", "value": ""}');
    await sleep(1000);
    assert.equal((await xs('xenstore-read', `${dom}/data/host/${id}`)).code, 0, 'the request is still there');
    assert.equal((await xs('xenstore-exists', `${dom}/data/guest/${id}`)).code, 1, 'and unanswered');

    writeFileSync(conf, `[file_write]\nenabled = false\n[transfers]\nstate_dir = "${join(root, 'state')}"\n`);
    await reload(2);
    // Serving again, the waiting request is answered first.
    const deadline = Date.now() + 10000;
    while ((await xs('xenstore-read', `${dom}/data/guest/${id}`)).code !== 0 && Date.now() < deadline) await sleep(100);
    assert.equal(JSON.parse((await xs('xenstore-read', `${dom}/data/guest/${id}`)).stdout).returncode, '0');
    assert.deepEqual(await novaCall('{"name": "features", "value": ""}'), { returncode: '0', message: 'version,features' });
    const off = await novaCall(JSON.stringify({ name: 'file_inject', value: { b64_path: b64(join(root, 'guest/x')), b64_file: b64('x') } }));
    assert.equal(off.returncode, '403');
    assert.match(off.message, /file write is disabled by the guest's owner \(file_write\.enabled = false\)/);
  });
});
