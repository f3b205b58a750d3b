// One test-bed VM (QEMU TCG) with the agent, a raw virtio-serial port and
// qemu-guest-agent on ports of the same virtio-serial bus: file throughput both
// ways, exec round trip, time to the first output line and idle RSS, side by side.
import * as net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { connect, PortholeClient } from '@porthole/broker';
import { CHUNK_SIZE, DEFAULT_STREAM_WINDOW, SLOW_PORT_STREAM_WINDOW } from '@porthole/protocol';
import { bootVm, Vm, agentBundlePath, GUEST_SPAWN_HELPER } from '@porthole/testbed';
import { guestProcessTimes } from './process-floor';
import { QgaClient } from '@porthole/qga';
import { BenchTable, MiB, mibPerSecond, percentile } from './table';
import { measureUnderBulk } from './channel';
import { benchQgaBackend } from './qga-backend';

export interface VmBenchSizes {
  /** Bytes of the file moved each way. */
  fileBytes: number;
  /** Timed runs of /bin/true per tool. */
  execRuns: number;
  /** Runs of the print-then-sleep command per tool. */
  firstLineRuns: number;
}

/** Bytes per guest-file-write / guest-file-read: qga clients send a few hundred KiB to 1 MiB per command. */
const QGA_CHUNK = 1 * MiB;
const FIRST_LINE_SLEEP_S = 2;
const GUEST_FILE = '/tmp/bench-porthole.bin';
const QGA_FILE = '/tmp/bench-qga.bin';
const AGENT_LOG = '/run/porthole-agent.log';

/**
 * The host end of the test bed's raw port tool (guest-files.ts RAW_TOOL): 'U'/'D' + u64 length,
 * or 'H'/'G' for the same with CRC32C and sha256 over every byte in the guest (`checked`).
 */
class RawPort {
  private waiting?: (chunk: Buffer) => void;

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => this.waiting?.(chunk));
  }

  static async connect(path: string): Promise<RawPort> {
    const socket = net.connect(path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', (err) => reject(new Error(`raw port ${path}: ${err.message}`)));
    });
    return new RawPort(socket);
  }

  private header(kind: 'U' | 'D' | 'H' | 'G', length: number): Buffer {
    const h = Buffer.alloc(9);
    h.write(kind, 0, 'latin1');
    h.writeBigUInt64BE(BigInt(length), 1);
    return h;
  }

  /** Received bytes are counted until `until` says stop. */
  private receive(until: (total: number, chunk: Buffer) => boolean): Promise<void> {
    let total = 0;
    return new Promise((resolve, reject) => {
      const onClose = () => reject(new Error('the raw port closed during the run (did the guest tool exit?)'));
      this.socket.once('close', onClose);
      this.waiting = (chunk) => {
        total += chunk.length;
        if (!until(total, chunk)) return;
        this.waiting = undefined;
        this.socket.off('close', onClose);
        resolve();
      };
    });
  }

  /** Host → guest: ms until the guest acknowledged every byte. */
  async upload(data: Buffer, checked = false): Promise<number> {
    const acked = this.receive((_n, chunk) => chunk.includes(0x4b));
    const t0 = performance.now();
    this.socket.write(this.header(checked ? 'H' : 'U', data.length));
    for (let off = 0; off < data.length; off += MiB) {
      if (!this.socket.write(data.subarray(off, off + MiB))) await new Promise((r) => this.socket.once('drain', r));
    }
    await acked;
    return performance.now() - t0;
  }

  /** Guest → host: ms until `length` bytes arrived. */
  async download(length: number, checked = false): Promise<number> {
    const all = this.receive((n) => n >= length);
    const t0 = performance.now();
    this.socket.write(this.header(checked ? 'G' : 'D', length));
    await all;
    return performance.now() - t0;
  }

  /** ms for one byte to the guest and its acknowledgement back: the port's round trip. */
  roundTrip(): Promise<number> {
    return this.upload(Buffer.of(0));
  }

  close(): void {
    this.socket.destroy();
  }
}

async function timed(run: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await run();
  return performance.now() - t0;
}

async function portholeRead(client: PortholeClient, path: string): Promise<{ sha256: string; length: number }> {
  const task = client.readFile(path);
  task.data.resume();
  return task.result;
}

async function portholeExec(client: PortholeClient, command: string[] | { shell: string }): Promise<{ firstOutputMs: number; exitMs: number; code: number | null }> {
  const t0 = performance.now();
  const task = client.exec(command);
  let firstOutputMs = NaN;
  task.stdout.once('data', () => { firstOutputMs = performance.now() - t0; });
  task.stdout.resume();
  task.stderr.resume();
  const exit = await task.exit;
  return { firstOutputMs, exitMs: performance.now() - t0, code: exit.code };
}

/**
 * Prints "agent <kB>" and "qga <kB>" (VmRSS). Matched on argv[0]/argv[1] so the
 * shell running this script, whose command line holds these names too, is not counted.
 */
const RSS_PROBE = `for p in /proc/[0-9]*; do
  set -- $(tr '\\0' ' ' < $p/cmdline 2>/dev/null)
  case "$1|$2" in
    */porthole-agent\\|*|*/node\\|*/porthole-agent.cjs|*/porthole-spawn\\|*) echo "agent $(awk '/^VmRSS/{print $2}' $p/status)";;
    */qemu-ga\\|*) echo "qga $(awk '/^VmRSS/{print $2}' $p/status)";;
  esac
done`;

/** MiB, summed over the processes of one agent (Porthole's: the agent and porthole-spawn). */
function parseRss(text: string, who: 'agent' | 'qga'): number {
  const kib = [...text.matchAll(new RegExp(`^${who} (\\d+)$`, 'gm'))].map((m) => Number(m[1]));
  if (!kib.length) throw new Error(`the RSS probe found no ${who} process in the guest (output: ${JSON.stringify(text.slice(0, 200))})`);
  return kib.reduce((a, b) => a + b, 0) / 1024;
}

/** Each agent's RSS in MiB, measured by the other one so the measured one is idle. */
async function idleRss(client: PortholeClient, qga: QgaClient): Promise<{ agent: number; qga: number }> {
  const viaQga = await qga.exec('/bin/sh', ['-c', RSS_PROBE]);
  const task = client.exec({ shell: RSS_PROBE });
  const out: Buffer[] = [];
  task.stdout.on('data', (d: Buffer) => out.push(d));
  await task.exit;
  return { agent: parseRss(viaQga.stdout.toString(), 'agent'), qga: parseRss(Buffer.concat(out).toString(), 'qga') };
}

export async function benchVm(sizes: VmBenchSizes, log: (m: string) => void = () => undefined): Promise<BenchTable[]> {
  // The agent's audit lines go to a file, as journald would keep them: through the test bed's emulated
  // serial console each line costs ~2.5 ms of guest CPU, which a back-to-back exec then waits for.
  const vm: Vm = await bootVm({ agent: { bundle: agentBundlePath() }, agentLog: AGENT_LOG, rawPorts: 1, qemuGuestAgent: true, log });
  let client: PortholeClient | undefined;
  let qga: QgaClient | undefined;
  let raw: RawPort | undefined;
  try {
    client = await connect(vm.target, { timeoutMs: 90000 });
    qga = await QgaClient.connect(vm.qgaSocketPath!);
    raw = await RawPort.connect(vm.rawSocketPaths[0]);
    const tables = await measure(sizes, client, qga, raw, log);
    // The qga back end needs the qga socket to itself (QEMU's chardev takes one client).
    qga.close();
    log('the broker\'s qemu-guest-agent back end beside Porthole\'s agent');
    tables.push(await benchQgaBackend(client, vm.qgaSocketPath!, sizes.fileBytes, sizes.execRuns));
    return tables;
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${vm.consoleTail(30)}`);
  } finally {
    raw?.close();
    qga?.close();
    client?.close();
    await vm.shutdown();
  }
}

async function measure(sizes: VmBenchSizes, client: PortholeClient, qga: QgaClient, raw: RawPort, log: (m: string) => void): Promise<BenchTable[]> {
  const bytes = sizes.fileBytes;
  const data = randomBytes(bytes);
  const sha = createHash('sha256').update(data).digest('hex');

  log('idle RSS');
  const rssBefore = await idleRss(client, qga);

  log(`host → guest, ${bytes / MiB} MiB: raw, Porthole, qemu-guest-agent`);
  const rawUp = await raw.upload(data);
  const checkedUp = await raw.upload(data, true);
  let installed = '';
  const phUp = await timed(async () => { installed = (await client.installFile(data, { path: GUEST_FILE }).result).sha256; });
  if (installed !== sha) throw new Error(`Porthole wrote sha256 ${installed}, expected ${sha}`);
  const qgaUp = await timed(() => qga.writeFile(QGA_FILE, data, QGA_CHUNK));

  log(`guest → host, ${bytes / MiB} MiB: raw, Porthole, qemu-guest-agent`);
  const rawDown = await raw.download(bytes);
  const checkedDown = await raw.download(bytes, true);
  let readBack = { sha256: '', length: 0 };
  const phDown = await timed(async () => { readBack = await portholeRead(client, GUEST_FILE); });
  if (readBack.sha256 !== sha) throw new Error(`Porthole read back sha256 ${readBack.sha256}, expected ${sha}`);
  let qgaBack: Buffer = Buffer.alloc(0);
  const qgaDown = await timed(async () => { qgaBack = await qga.readFile(QGA_FILE, QGA_CHUNK); });
  if (!qgaBack.equals(data)) throw new Error(`qemu-guest-agent read back ${qgaBack.length} bytes that differ from the ${bytes} written`);

  log(`info round trips idle, then beside a ${bytes / MiB} MiB injection and its read-back`);
  const info = () => timed(async () => { await client.info(); });
  const underInject = await measureUnderBulk(info, async () => { await client.installFile(data, { path: GUEST_FILE }).result; }, 30, { startMs: 200, gapMs: 50 });
  const underRead = await measureUnderBulk(info, async () => { await portholeRead(client, GUEST_FILE); }, 0, { startMs: 200, gapMs: 50 });

  log(`exec /bin/true × ${sizes.execRuns} each`);
  // Each tool runs in blocks of back-to-back runs (its own steady state: a command started right after
  // another one's starts faster in this guest), in two rounds of opposite order so drift hits both alike.
  const phExec: number[] = [];
  const qgaExec10: number[] = [];
  const qgaExec0: number[] = [];
  const roundTrips: number[] = [];
  const block = async (into: number[], runs: number, run: () => Promise<number>) => {
    for (let i = 0; i < runs + 2; i++) {
      const ms = await run();
      if (i >= 2) into.push(ms); // the first two warm up caches
    }
  };
  const porthole = async () => {
    const p = await portholeExec(client, ['/bin/true']);
    if (p.code !== 0) throw new Error(`Porthole exec /bin/true exited ${p.code}`);
    return p.exitMs;
  };
  const blocks: Array<(runs: number) => Promise<void>> = [
    (runs) => block(phExec, runs, porthole),
    (runs) => block(qgaExec0, runs, () => timed(() => qga.exec('/bin/true', [], 0))),
    (runs) => block(qgaExec10, runs, () => timed(() => qga.exec('/bin/true', [], 10))),
    (runs) => block(roundTrips, runs, () => raw.roundTrip()),
  ];
  for (const order of [blocks, [...blocks].reverse()]) {
    for (const b of order) await b(Math.ceil(sizes.execRuns / 2));
  }

  log(`/bin/true × ${sizes.execRuns} started by porthole-spawn in the guest, timed there`);
  const processMs = (await guestProcessTimes(client, GUEST_SPAWN_HELPER, sizes.execRuns + 2)).slice(2);

  log(`first output line × ${sizes.firstLineRuns} each (the command sleeps ${FIRST_LINE_SLEEP_S} s after it)`);
  const script = `echo first; sleep ${FIRST_LINE_SLEEP_S}; echo second`;
  const phFirst: number[] = [];
  const phFirstExit: number[] = [];
  const qgaFirst: number[] = [];
  for (let i = 0; i < sizes.firstLineRuns; i++) {
    const p = await portholeExec(client, { shell: script });
    phFirst.push(p.firstOutputMs);
    phFirstExit.push(p.exitMs);
    let out = '';
    // qemu-guest-agent hands out captured output only once the process exited.
    qgaFirst.push(await timed(async () => { out = (await qga.exec('/bin/sh', ['-c', script], 10)).stdout.toString(); }));
    if (!out.startsWith('first\n')) throw new Error(`qemu-guest-agent returned ${JSON.stringify(out)} for the print-then-sleep command`);
  }

  log('idle RSS after the runs');
  const rssAfter = await idleRss(client, qga);

  const up = { raw: mibPerSecond(bytes, rawUp), checked: mibPerSecond(bytes, checkedUp), ph: mibPerSecond(bytes, phUp), qga: mibPerSecond(bytes, qgaUp) };
  const down = { raw: mibPerSecond(bytes, rawDown), checked: mibPerSecond(bytes, checkedDown), ph: mibPerSecond(bytes, phDown), qga: mibPerSecond(bytes, qgaDown) };
  const row = (direction: string, method: string, r: Record<'raw' | 'checked' | 'qga', number>, mibs: number, ms: number) =>
    [direction, method, mibs, ms / 1000, mibs / r.raw, mibs / r.checked, mibs / r.qga];
  const med = (v: number[]) => percentile(v, 50);
  const qgaBest = med(qgaExec0) < med(qgaExec10) ? qgaExec0 : qgaExec10;
  const throughput: BenchTable = {
    title: `VM file transfer, ${bytes / MiB} MiB, one QEMU (TCG) guest`,
    columns: ['direction', 'method', 'MiB/s', 'seconds', 'ratio to raw', 'ratio to checked raw', 'ratio to qga'],
    rows: [
      row('host → guest', 'raw virtio-serial port', up, up.raw, rawUp),
      row('host → guest', 'raw port + CRC32C and sha256 in the guest', up, up.checked, checkedUp),
      row('host → guest', 'Porthole installFile', up, up.ph, phUp),
      row('host → guest', 'qemu-guest-agent guest-file-write', up, up.qga, qgaUp),
      row('guest → host', 'raw virtio-serial port', down, down.raw, rawDown),
      row('guest → host', 'raw port + CRC32C and sha256 in the guest', down, down.checked, checkedDown),
      row('guest → host', 'Porthole readFile', down, down.ph, phDown),
      row('guest → host', 'qemu-guest-agent guest-file-read', down, down.qga, qgaDown),
    ],
    notes: [
      'raw: plain bytes through a second port of the same virtio-serial device to a guest Node process that polls the port from its event loop as the agent does, and discards them (or sends zeros) — the limit',
      'checked raw: the same, with the per-byte work any verified transfer does in the guest and nothing else: CRC32C (native) of every 128 KiB and sha256 of the whole — the limit for a protocol that checks what it moves',
      `Porthole: ${CHUNK_SIZE / 1024} KiB chunks, written to the guest's tmpfs atomically, sha256 checked both ways; target ratio to raw ≥ 0.9`,
      `qemu-guest-agent (Debian's qemu-ga in the same guest): guest-file-open/write/close, base64 in JSON, ${QGA_CHUNK / MiB} MiB per command, one command in flight`,
      'under TCG the guest driver hands out 4 KiB per read() and the port takes up to 32 KiB per write(); Porthole is bound by the work the emulated CPU does on every byte (CRC32C about 107 MiB/s, sha256 about 60–90 MiB/s in this guest, protobuf, the file I/O), which raw does not do; the guest\'s two vCPUs share this host\'s two cores with QEMU and the broker',
    ],
  };
  const exec: BenchTable = {
    title: 'VM exec and output latency, one QEMU (TCG) guest',
    columns: ['measure', 'Porthole', 'qemu-guest-agent', 'ratio Porthole / qga'],
    rows: [
      [`exec /bin/true round trip p50, ms (${sizes.execRuns} runs)`, med(phExec), `${med(qgaExec10).toFixed(1)} (poll 10 ms) / ${med(qgaExec0).toFixed(1)} (poll back to back)`, med(phExec) / med(qgaBest)],
      ['exec /bin/true round trip p95, ms', percentile(phExec, 95), `${percentile(qgaExec10, 95).toFixed(1)} / ${percentile(qgaExec0, 95).toFixed(1)}`, percentile(phExec, 95) / percentile(qgaBest, 95)],
      [`first output line of "${script}", ms (p50 of ${sizes.firstLineRuns})`, med(phFirst), med(qgaFirst), med(phFirst) / med(qgaFirst)],
      ['same command, exit seen by the host, ms', med(phFirstExit), med(qgaFirst), med(phFirstExit) / med(qgaFirst)],
      [`raw port round trip p50, ms (1 byte there, 1 back; ${roundTrips.length} runs)`, med(roundTrips), '', ''],
      [`/bin/true started and reaped in the guest p50, ms (porthole-spawn alone, timed in the guest; ${processMs.length} runs)`, med(processMs), '', ''],
      ['floor for any agent: round trip + process, ms', med(roundTrips) + med(processMs), `0.5 × qga = ${(med(qgaBest) / 2).toFixed(1)}`, (med(roundTrips) + med(processMs)) / med(qgaBest)],
      ['idle RSS after boot, MiB', rssBefore.agent, rssBefore.qga, rssBefore.agent / rssBefore.qga],
      ['idle RSS after these runs, MiB', rssAfter.agent, rssAfter.qga, rssAfter.agent / rssAfter.qga],
    ],
    notes: [
      'exec ratio against the faster qga polling; target ≤ 0.5',
      `each tool runs in blocks of back-to-back commands, in two rounds of opposite order; the agent logs one audit line per request to ${AGENT_LOG} in the guest (qemu-ga logs nothing per command), not to the test bed's serial console`,
      'qemu-guest-agent has no streaming: guest-exec-status returns captured output only once the process exited',
      'first line: from the host sending the request to the host holding the line (both clocks on the host)',
      'RSS: VmRSS of each agent process, read while it was idle (the probe ran through the other agent); the Porthole agent is Node (the JS bundle) plus porthole-spawn (C, started at the first command), qemu-ga is C',
    ],
  };
  const idleInfo = med(underInject.idle);
  const beside: BenchTable = {
    title: 'VM: a small request beside a bulk transfer, one QEMU (TCG) guest',
    columns: ['measure', 'ms', 'idle ms', 'ratio to idle'],
    rows: [
      [`info round trip p50, idle (${underInject.idle.length} runs)`, idleInfo, idleInfo, 1],
      [`info round trip p50 during the ${bytes / MiB} MiB injection (${underInject.loaded.length} runs)`, med(underInject.loaded), idleInfo, med(underInject.loaded) / idleInfo],
      ['info round trip p95 during the injection', percentile(underInject.loaded, 95), percentile(underInject.idle, 95), percentile(underInject.loaded, 95) / percentile(underInject.idle, 95)],
      [`info round trip p50 during its read-back (${underRead.loaded.length} runs)`, med(underRead.loaded), idleInfo, med(underRead.loaded) / idleInfo],
    ],
    notes: [
      `an info request (a stream opened, answered and closed) every 50 ms while the transfer runs; the window the agent grants per stream (${SLOW_PORT_STREAM_WINDOW / 1024} KiB) bounds what the request can find queued ahead of it in the port; the broker grants the default ${DEFAULT_STREAM_WINDOW / MiB} MiB for the read-back`,
    ],
  };
  return [throughput, exec, beside];
}
