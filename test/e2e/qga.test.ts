// A VM with only qemu-guest-agent: driven through the broker's qga back end (info, exec, cp both ways,
// a --block-rpcs refusal), then turned into a Porthole VM live with `porthole agent install` (port
// hot-plugged over QMP, agent pushed through qemu-ga) — and the next exec streams through Porthole's agent.
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootVm, Vm, agentExecutablePath } from '@porthole/testbed';
import { connect, connectGuest, QgaGuest } from '@porthole/broker';
import { liveOutput, run } from './helpers';

const repo = join(__dirname, '..', '..');
const cli = join(repo, 'packages', 'broker', 'bin', 'porthole.js');
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function porthole(args: string[], timeoutMs = 300_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [cli, '--direct', ...args], { timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0, stdout, stderr });
    });
    child.stdin?.end();
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
