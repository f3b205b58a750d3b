// A VM with only qemu-guest-agent: driven through the broker's qga back end (info, exec, cp both ways,
// a --block-rpcs refusal), then turned into a Porthole VM live with `porthole agent install` (port
// hot-plugged over QMP, agent pushed through qemu-ga) — and the next exec streams through Porthole's agent.
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootLibvirtVm, bootVm, LibvirtVm, Vm, agentExecutablePath } from '@porthole/testbed';
import { connect, connectGuest, QgaGuest, startBrokerServer } from '@porthole/broker';
import { request } from 'node:http';
import { unixRequest } from '../broker/http';
import { liveOutput, run } from './helpers';

const repo = join(__dirname, '..', '..');
const cli = join(repo, 'packages', 'broker', 'bin', 'porthole.js');
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** `porthole --direct ARGS` (the built CLI), killed after timeoutMs: a test waits boundedly. */
function porthole(args: string[], opts: { timeoutMs?: number; onStdout?: () => void } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const timeoutMs = opts.timeoutMs ?? 300_000;
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, '--direct', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); opts.onStdout?.(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr: signal ? `${stderr}\n(porthole ${args.join(' ')}: killed by ${signal}, timeout ${timeoutMs} ms)` : stderr });
    });
  });
}

describe('qemu-guest-agent VMs (real QEMU, real qemu-ga)', function () {
  this.timeout(300_000);
  let vm: Vm | undefined;
  let tmp: string;
  let qga: string;

  before(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'porthole-qga-'));
    // No Porthole port and no agent: what a stock image with qemu-guest-agent looks like to the host.
    vm = await bootVm({ agentPort: false, qemuGuestAgent: true });
    qga = `qga:${vm.qgaSocketPath}`;
  });

  after(async () => {
    await vm?.shutdown();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('says qemu-guest-agent answered (info --json) and runs commands with their output at exit', async () => {
    const info = await porthole(['--json', 'info', qga]);
    assert.equal(info.code, 0, info.stderr);
    const j = JSON.parse(info.stdout);
    assert.equal(j.backend, 'qemu-guest-agent');
    assert.match(j.agent, /^qemu-guest-agent \d+\.\d+/);
    assert.equal(j.hostname, 'porthole-guest');
    assert.deepEqual([...j.capabilities].sort(), ['exec', 'file_read', 'file_write']);

    const ok = await porthole(['exec', qga, '--', 'sh', '-c', 'echo out; echo err >&2; exit 3']);
    assert.equal(ok.code, 3);
    assert.equal(ok.stdout, 'out\n');
    assert.equal(ok.stderr, 'err\n');
    const json = await porthole(['--json', 'exec', qga, '--', '/bin/true']);
    const status = JSON.parse(json.stderr.trim().split('\n').pop()!);
    assert.equal(status.code, 0);
    assert.equal(status.streamed, false);
    assert.equal(status.outputTruncated, false);
  });

  it('copies files in (owner, mode, sha256 checked by the guest) and out through qemu-ga', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 17);
    writeFileSync(join(tmp, 'in.bin'), data);
    const put = await porthole(['--json', 'cp', join(tmp, 'in.bin'), `${qga}:/tmp/q/in.bin`, '--mkdir', '--owner', 'tester', '--mode', '0640']);
    assert.equal(put.code, 0, put.stderr);
    const r = JSON.parse(put.stdout);
    assert.equal(r.sha256, sha256(data));
    assert.equal(r.uid, 1000);
    assert.equal(r.mode, '0640');
    const get = await porthole(['--json', 'cp', `${qga}:/tmp/q/in.bin`, join(tmp, 'out.bin')]);
    assert.equal(get.code, 0, get.stderr);
    assert.equal(JSON.parse(get.stdout).sha256, sha256(data));
    assert.ok(readFileSync(join(tmp, 'out.bin')).equals(data));
    const missing = await porthole(['cp', `${qga}:/tmp/none`, join(tmp, 'none')]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /No such file/i);
  });

  it('the daemon\'s REST task routes run commands and inject files through qemu-ga', async () => {
    const sock = join(tmp, 'broker.sock');
    const server = await startBrokerServer({ listen: `unix:${sock}`, journal: join(tmp, 'journal.bin') });
    try {
      const ended = async (id: string) => {
        const deadline = Date.now() + 60_000;
        for (;;) {
          const t = (await unixRequest(sock, 'GET', `/v1/tasks/${id}`)).json as { status: string; result?: Record<string, unknown>; outputBytes?: number };
          if (t.status !== 'running') return t;
          if (Date.now() > deadline) throw new Error(`task ${id} still running after 60 s`);
          await new Promise((r) => setTimeout(r, 100));
        }
      };
      const started = await unixRequest(sock, 'POST', '/v1/tasks/exec', { target: qga, argv: ['sh', '-c', 'echo over rest; exit 5'] });
      assert.equal(started.status, 202, JSON.stringify(started.json));
      const t = await ended((started.json as { id: string }).id);
      assert.equal(t.status, 'done', JSON.stringify(t));
      assert.equal(t.result!.code, 5);
      assert.equal(t.result!.streamed, false);
      assert.equal(t.outputBytes, 'over rest\n'.length);

      const content = randomBytes(200_000);
      const q = new URLSearchParams({ target: qga, path: '/tmp/q/rest.bin', mode: '0600' });
      const inject = await new Promise<{ status: number; json: { status: string; result: Record<string, unknown> } }>((resolve, reject) => {
        const req = request({ socketPath: sock, method: 'POST', path: `/v1/tasks/inject?${q}`, headers: { 'content-type': 'application/octet-stream' } }, (res) => {
          let text = '';
          res.on('data', (b: Buffer) => (text += b.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(text) }));
        });
        req.on('error', reject);
        req.end(content);
      });
      assert.equal(inject.status, 200, JSON.stringify(inject.json));
      assert.deepEqual([inject.json.status, inject.json.result.sha256, inject.json.result.mode], ['done', sha256(content), '0600']);
    } finally {
      await server.close();
    }
  });

  it('agent install hot-plugs the port over QMP, installs the agent through qemu-ga, and exec then streams — no reboot', async () => {
    const guest = (await connectGuest(qga)) as QgaGuest;
    const bootId = (await guest.run(['/bin/cat', '/proc/sys/kernel/random/boot_id']).finally(() => guest.close())).stdout.toString();
    const install = await porthole(['--json', 'agent', 'install', qga, '--qmp', vm!.qmpSocketPath, '--executable', agentExecutablePath()!]);
    assert.equal(install.code, 0, install.stderr + install.stdout);
    const r = JSON.parse(install.stdout);
    assert.equal(r.action, 'installed');
    assert.equal(r.hotplugged, true);
    assert.match(r.agent, /^porthole-agent /);
    assert.match(r.qemuGuestAgent, /^qemu-guest-agent /);
    const client = await connect(r.portholeTarget, { broker: false, timeoutMs: 30000 });
    try {
      const live = await liveOutput(client);
      assert.deepEqual(live.atFirstOutput, ['out:first'], 'the first line arrived before the command ended');
      assert.equal((await run(client, ['/bin/cat', '/proc/sys/kernel/random/boot_id'])).stdout, bootId, 'same boot');
    } finally {
      client.close();
    }
    const again = await porthole(['--json', 'agent', 'install', qga, '--qmp', vm!.qmpSocketPath, '--executable', agentExecutablePath()!]);
    assert.equal(again.code, 0, again.stderr + again.stdout);
    assert.equal(JSON.parse(again.stdout).action, 'current');
    assert.equal(JSON.parse(again.stdout).hotplugged, false);
  });

  it('maps qemu-ga --block-rpcs refusals to policy errors (exit 4)', async () => {
    const agentTarget = `unix:${join(vm!.dir, 'porthole-agent.sock')}`;
    const client = await connect(agentTarget, { broker: false, timeoutMs: 30000 });
    try {
      // Restart qemu-ga with guest-exec disabled, through Porthole's agent.
      const restart = await run(client, { shell: 'kill $(pidof qemu-ga); sleep 1; /usr/sbin/qemu-ga -d -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run/qga -f /run/qga/pid -b guest-exec; sleep 1' });
      assert.equal(restart.code, 0, restart.stderr);
    } finally {
      client.close();
    }
    const exec = await porthole(['--json', 'exec', qga, '--', '/bin/true']);
    assert.equal(exec.code, 4, exec.stderr + exec.stdout);
    const err = JSON.parse(exec.stdout);
    assert.equal(err.error.code, 'POLICY_DENIED');
    assert.match(err.error.message, /guest-exec has been disabled/);
    const info = JSON.parse((await porthole(['--json', 'info', qga])).stdout);
    assert.ok(info.disabledCommands.includes('guest-exec'));
    assert.ok(!info.capabilities.includes('exec'));
    const install = await porthole(['agent', 'install', qga, '--qmp', vm!.qmpSocketPath, '--executable', agentExecutablePath()!]);
    assert.equal(install.code, 4, install.stderr + install.stdout);
    assert.match(install.stderr, /guest-exec/);
    // Files still work (sha256 checked by reading back: no sha256sum without guest-exec).
    const put = await porthole(['--json', 'cp', '-', `${qga}:/tmp/blocked.txt`]);
    assert.equal(put.code, 0, put.stderr);
  });
});

describe('qemu-guest-agent libvirt domains (real libvirtd, real qemu-ga)', function () {
  this.timeout(300_000);
  let vm: LibvirtVm | undefined;

  before(async () => {
    // A domain as a stock image gives it: the qemu-guest-agent channel and no Porthole channel, no agent.
    vm = await bootLibvirtVm({
      transformXml: (xml) => xml.replace(/\s*<channel type='unix'>\s*<source mode='bind'\/>\s*<target type='virtio' name='org\.porthole\.agent\.0'\/>\s*<\/channel>/, ''),
    });
  });
  after(async () => {
    await vm?.shutdown();
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed' && vm) console.log(vm.consoleTail(40));
  });

  it('libvirt:DOMAIN falls back to qemu-guest-agent; agent install attaches the channel live, and then Porthole\'s agent answers and streams', async () => {
    const target = vm!.target;
    assert.ok(!(await vm!.domain('dumpxml')).includes('org.porthole.agent.0'));
    const before = await porthole(['--json', 'info', target]);
    assert.equal(before.code, 0, before.stderr);
    assert.equal(JSON.parse(before.stdout).backend, 'qemu-guest-agent');
    const bootId = (await porthole(['exec', target, '--', 'cat', '/proc/sys/kernel/random/boot_id'])).stdout;

    const install = await porthole(['--json', 'agent', 'install', target, '--executable', agentExecutablePath()!]);
    assert.equal(install.code, 0, install.stderr + install.stdout);
    const r = JSON.parse(install.stdout);
    assert.deepEqual([r.action, r.hotplugged, r.portholeTarget], ['installed', true, target]);
    assert.match(await vm!.domain('dumpxml'), /<target type='virtio' name='org\.porthole\.agent\.0' state='connected'\/>/);

    // Both agents now answer in this domain: Porthole's is preferred, and info says which one answered.
    const after = await porthole(['--json', 'info', target]);
    assert.equal(after.code, 0, after.stderr);
    assert.equal(JSON.parse(after.stdout).backend, 'porthole');
    assert.match(JSON.parse(after.stdout).agent, /^porthole-agent /);
    let firstAt = 0;
    const exec = await porthole(['exec', target, '--', 'sh', '-c', 'echo first; sleep 3; echo second; cat /proc/sys/kernel/random/boot_id'], { onStdout: () => { firstAt ||= Date.now(); } });
    assert.equal(exec.code, 0, exec.stderr);
    assert.equal(exec.stdout, `first\nsecond\n${bootId}`, 'same boot');
    assert.ok(Date.now() - firstAt >= 2500, 'the first line arrived while the command still ran');
    // qemu-guest-agent still runs beside it (libvirtd holds its channel: asked through virsh).
    assert.equal(JSON.parse(await vm!.domain('qemu-agent-command', '{"execute":"guest-ping"}')).return !== undefined, true);

    const again = await porthole(['--json', 'agent', 'install', target, '--executable', agentExecutablePath()!]);
    assert.equal(again.code, 0, again.stderr + again.stdout);
    assert.deepEqual([JSON.parse(again.stdout).action, JSON.parse(again.stdout).hotplugged], ['current', false]);
  });
});
