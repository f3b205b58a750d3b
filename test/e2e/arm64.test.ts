// The core cases end to end in an aarch64 guest: QEMU's virt machine (Cortex-A57, TCG) running
// Debian's arm64 kernel, with the agent's linux-arm64 single executable and porthole-spawn inside,
// driven through the broker's client. One boot for every case: an emulated aarch64 guest is slow.
import { strict as assert } from 'node:assert';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, PortholeClient } from '@porthole/broker';
import { buildIsoPayload, BuildResult } from '@porthole/media';
import { PortholeError, v1 } from '@porthole/protocol';
import { agentExecutableFor, bootVm, Vm } from '@porthole/testbed';
import { auditLines, changeMedium, liveOutput, payloadEvents, readBack, run, waitFor } from './helpers';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('end to end in an aarch64 VM (QEMU virt, TCG): the linux-arm64 agent', function () {
  this.timeout(300_000);
  let dir: string;
  let vm: Vm | undefined;
  let client: PortholeClient;
  let events: ReturnType<typeof payloadEvents>;
  let cd: BuildResult;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-e2e-arm64-'));
    cd = await buildIsoPayload([{
      id: 'arm64-boot-cd',
      entries: [
        { guestPath: '/etc/app/app.conf', content: { data: Buffer.from('from the CD\n') }, owner: 'tester', group: 'users', mode: '0640' },
        { guestPath: '/srv/données/ファイル.txt', content: { data: Buffer.from('non-ASCII path') } },
      ],
      commands: [['/bin/sh', '-c', 'uname -m > /run/boot-cd.ran']],
    }], join(dir, 'boot.iso'), { tmpDir: dir });
    const agent = agentExecutableFor('arm64');
    const started = Date.now();
    vm = await bootVm({ arch: 'arm64', agent: { executable: agent }, cdrom: cd.path });
    const booted = Date.now();
    client = await connect(vm.target, { timeoutMs: 120_000 });
    events = payloadEvents(client);
    console.log(`      aarch64 guest: boot to init ${booted - started} ms, to the agent's hello ${Date.now() - started} ms`);
  });
  after(async () => {
    client?.close();
    await vm?.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(vm?.consoleTail(60));
  });

  it('handshakes: the agent says it is arm64 on an aarch64 kernel, and starts commands through the arm64 porthole-spawn', async () => {
    const hello = client.hello!;
    assert.match(hello.softwareVersion, /^porthole-agent /);
    assert.equal(hello.arch, 'arm64');
    assert.equal(hello.os, 'linux');
    assert.match(hello.kernel, /-arm64$/);
    assert.deepEqual([...hello.capabilities].sort(), [1, 2, 3, 4]);
    assert.equal((await run(client, ['uname', '-m'])).stdout, 'aarch64\n');
    // The shell's parent is whoever started it: the helper, not the agent (which would mean a fallback).
    assert.equal((await run(client, ['sh', '-c', 'cat /proc/$PPID/comm'])).stdout, 'porthole-spawn\n');
  });

  it('injects files with owner, group, mode and parent directories; the sha256 read back matches', async () => {
    const small = Buffer.from('hello from the host\n');
    const r = await client.installFile(small, { path: '/srv/app/conf/app.conf', owner: 'tester', group: 'users', mode: 0o640, mkdir: true }).result;
    assert.equal(r.sha256, sha256(small));
    const back = await readBack(client, '/srv/app/conf/app.conf');
    assert.deepEqual([back.data.toString(), back.sha256, back.mode, back.uid, back.gid], [small.toString(), sha256(small), 0o640, 1000, 100]);
    assert.equal((await run(client, ['stat', '-c', '%U:%G %a', '/srv/app/conf/app.conf'])).stdout, 'tester:users 640\n');

    const big = randomBytes(8 * 1024 * 1024);
    const written = await client.installFile(big, { path: '/tmp/big.bin', mode: 0o600 }).result;
    assert.deepEqual([written.size, written.sha256], [big.length, sha256(big)]);
    // virtio-serial cannot corrupt bytes: the payload CRC32C was negotiated off, so no CRC32C was chosen for bulk frames.
    assert.deepEqual(await auditLines(vm!, client, 'crc32c'), [], 'no payload CRC over virtio-serial');
    const bigBack = await readBack(client, '/tmp/big.bin');
    assert.equal(bigBack.sha256, sha256(big));
    assert.ok(bigBack.data.equals(big), 'the bytes read back are the bytes sent');
    assert.equal((await run(client, ['sha256sum', '/tmp/big.bin'])).stdout.split(' ')[0], sha256(big), 'the guest\'s own sha256sum agrees');
  });

  it('streams exec: the first line before the command ends, stdin in, exit codes and signals out', async () => {
    const { atFirstOutput, all } = await liveOutput(client);
    assert.deepEqual(atFirstOutput, ['out:first'], 'the first line arrived while the command still ran');
    assert.deepEqual(all, ['out:first', 'out:second', 'exit']);

    const upper = client.exec(['tr', 'a-z', 'A-Z'], { stdin: true });
    const out: Buffer[] = [];
    upper.stdout.on('data', (d: Buffer) => out.push(d));
    upper.stdin.write('hello ');
    upper.stdin.end('aarch64\n');
    assert.equal((await upper.exit).code, 0);
    assert.equal(Buffer.concat(out).toString(), 'HELLO AARCH64\n');

    assert.equal((await run(client, ['sh', '-c', 'exit 3'])).code, 3);
    const killed = await run(client, ['sh', '-c', 'kill -TERM $$']);
    assert.deepEqual([killed.code, killed.signal], [null, 'SIGTERM']);
    await assert.rejects(run(client, ['/no/such/command']), (e: PortholeError) => e.codeName === 'NOT_FOUND');
  });

  it('applies the payload CD it booted with (SCSI CD on virtio-scsi): files with owner, group and mode, then its command', async () => {
    const applied = await waitFor('the boot CD applied', async () => (await auditLines(vm!, client, 'payload applied')).find((l) => l.payloadId === 'arm64-boot-cd'));
    assert.equal(applied.device, '/dev/sr0');
    assert.equal(applied.contentSha256, cd.manifest.payloads[0].contentSha256);
    const conf = await readBack(client, '/etc/app/app.conf');
    assert.deepEqual([conf.data.toString(), conf.mode, conf.uid, conf.gid], ['from the CD\n', 0o640, 1000, 100]);
    assert.equal((await readBack(client, '/srv/données/ファイル.txt')).data.toString(), 'non-ASCII path');
    assert.equal((await readBack(client, '/run/boot-cd.ran')).data.toString(), 'aarch64\n');
    assert.doesNotMatch((await run(client, ['cat', '/proc/mounts'])).stdout, /\/dev\/sr0/, 'unmounted after applying');
  });

  it('detects a CD inserted over QMP, applies it and reports it to the connected broker', async () => {
    const hot = await buildIsoPayload([{ id: 'arm64-hot', entries: [{ guestPath: '/opt/hot/plugged.txt', content: { data: Buffer.from('hot-plugged') }, mode: '0604' }] }],
      join(dir, 'hot.iso'), { tmpDir: dir });
    await changeMedium(await vm!.qmp(), hot.path);
    const event = await events.next((e) => e.payloadId === 'arm64-hot');
    assert.equal(event.state, v1.PayloadState.PAYLOAD_APPLIED);
    assert.equal(event.contentSha256, hot.manifest.payloads[0].contentSha256);
    const file = await readBack(client, '/opt/hot/plugged.txt');
    assert.deepEqual([file.data.toString(), file.mode], ['hot-plugged', 0o604]);
  });
});
