// End to end in a real VM through the host's broker daemon: `porthole serve` holds the VM's
// virtio-serial channel, and the CLI, REST tasks and a library user reach the VM through it at once.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, PortholeClient } from '@porthole/broker';
import { PortholeError } from '@porthole/protocol';
import { bootVm, Vm, agentBundlePath, agentExecutablePath } from '@porthole/testbed';
import { porthole, serve, Serving } from '../broker/guest';
import { readLines } from '../broker/http';

const TOKEN = 'e2e-daemon-token-0123456789';

function agent() {
  const exe = agentExecutablePath();
  return exe ? { executable: exe } : { bundle: agentBundlePath() };
}

async function output(client: PortholeClient, command: string[] | { shell: string }): Promise<{ code: number | null; stdout: string }> {
  const task = client.exec(command);
  let stdout = '';
  task.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  return { code: (await task.exit).code, stdout };
}

describe('end to end in a real VM through the broker daemon (QEMU TCG, virtio-serial)', function () {
  this.timeout(240000);
  let vm: Vm | undefined;
  let daemon: Serving | undefined;
  let dir: string;
  let sock: string;
  let client: PortholeClient | undefined;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-e2e-daemon-'));
    sock = join(dir, 'broker.sock');
    writeFileSync(join(dir, 'token'), TOKEN, { mode: 0o600 });
    vm = await bootVm({ agent: agent() });
    daemon = await serve(['--listen', `unix:${sock}`, '--listen', 'tcp:127.0.0.1:0', '--token-file', join(dir, 'token'), '--journal', join(dir, 'journal.bin')]);
    client = await connect(vm.target, { broker: sock, timeoutMs: 90000 });
  });
  after(async () => {
    client?.close();
    await daemon?.stop();
    await vm?.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(vm?.consoleTail(60), daemon?.stderr().slice(-3000));
  });

  it('runs a CLI command, a REST task and a library user\'s command in the VM at the same time', async () => {
    const names = ['cli', 'rest', 'lib'];
    const meet = (name: string) => `mkdir -p /tmp/meet; touch /tmp/meet/${name}; for i in $(seq 600); do `
      + `if ${names.map((n) => `[ -e /tmp/meet/${n} ]`).join(' && ')}; then echo ${name} met the others; exit 0; fi; sleep 0.1; done; exit 1`;
    const cli = porthole(['--verbose', '--broker-socket', sock, '--timeout', '60', 'exec', vm!.target, '--', 'sh', '-c', meet('cli')]);
    const api = daemon!.addresses[1];
    const headers = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
    const res = await fetch(`${api}/v1/tasks/exec`, { method: 'POST', headers, body: JSON.stringify({ target: vm!.target, shell: meet('rest') }) });
    assert.equal(res.status, 202, await res.clone().text());
    const { id } = (await res.json()) as { id: string };
    const lib = output(client!, { shell: meet('lib') });
    const lines = await readLines(await fetch(`${api}/v1/tasks/${id}/output?encoding=utf8`, { headers }));
    const [c, l] = await Promise.all([cli, lib]);
    assert.equal(c.code, 0, c.stderr);
    assert.equal(c.stdout.toString(), 'cli met the others\n');
    assert.match(c.stderr, /porthole: through the broker daemon at /);
    assert.deepEqual(l, { code: 0, stdout: 'lib met the others\n' });
    assert.equal(lines.pop()!.task!.status, 'done');
    assert.equal(lines.map((x) => x.text).join(''), 'rest met the others\n');
    const health = (await (await fetch(`${api}/v1/health`, { headers })).json()) as { vms: number };
    assert.equal(health.vms, 1);
  });

  it('copies into the VM through the CLI while the library reads the file back through the same daemon', async () => {
    const local = join(dir, 'payload.txt');
    writeFileSync(local, 'through the daemon\n'.repeat(1000));
    const cp = await porthole(['--broker-socket', sock, 'cp', local, `${vm!.target}:/tmp/payload.txt`, '--mode', '0640']);
    assert.equal(cp.code, 0, cp.stderr);
    const read = client!.readFile('/tmp/payload.txt');
    let text = '';
    read.data.on('data', (d: Buffer) => (text += d.toString()));
    const r = await read.result;
    assert.equal(text, 'through the daemon\n'.repeat(1000));
    assert.equal(r.header.mode & 0o777, 0o640);
  });

  it('carries its clients over the agent restarting in the guest: work in flight fails clearly, then they go on', async () => {
    const pending = client!.exec(['sleep', '30']);
    await pending.started;
    // The shell's parent is porthole-spawn, whose parent is the agent; the guest's init restarts it.
    void output(client!, { shell: 'kill -9 $(cut -d" " -f4 /proc/$PPID/stat)' }).catch(() => undefined);
    await assert.rejects(pending.exit, (e: PortholeError) => e.codeName === 'SESSION_RESET');
    let back: { code: number | null; stdout: string } | undefined;
    for (let i = 0; i < 30 && !back; i++) {
      back = await output(client!, ['echo', 'back']).catch(() => undefined);
      if (!back) await new Promise((r) => setTimeout(r, 1000));
    }
    assert.deepEqual(back, { code: 0, stdout: 'back\n' });
    const cli = await porthole(['--broker-socket', sock, 'exec', vm!.target, '--', 'echo', 'cli too']);
    assert.equal(cli.stdout.toString(), 'cli too\n', cli.stderr);
  });
});
