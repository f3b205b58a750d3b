// One test-bed VM (QEMU TCG) with the agent, a raw virtio-serial port and
// qemu-guest-agent on ports of the same virtio-serial bus: file throughput both
// ways, exec round trip, time to the first output line and idle RSS, side by side.
import * as net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { connect, PortholeClient } from '@porthole/broker';
import { IDLE_TRIM_MS, OFF_THREAD_MIN } from '@porthole/agent';
import { chunkSizeFor, DEFAULT_MAX_FRAME_SIZE, DEFAULT_STREAM_WINDOW, SLOW_PORT_STREAM_WINDOW } from '@porthole/protocol';
import { bootVm, Vm, agentBundlePath, GUEST_SPAWN_HELPER, GUEST_SPAWN_TIMER, RawTool } from '@porthole/testbed';
import { guestProcessTimes, guestSpawnTimes } from './process-floor';
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
  /** Bytes of stdout of the exec throughput run (head -c of /dev/zero). */
  execStdoutBytes: number;
}

/** Bytes per guest-file-write / guest-file-read: qga clients send a few hundred KiB to 1 MiB per command. */
const QGA_CHUNK = 1 * MiB;
const FIRST_LINE_SLEEP_S = 2;
const GUEST_FILE = '/tmp/bench-porthole.bin';
const QGA_FILE = '/tmp/bench-qga.bin';
const AGENT_LOG = '/run/porthole-agent.log';

/**
 * The host end of the test bed's raw port tools (guest-files.ts RAW_TOOL, RAW_BLOCKING_TOOL): 'U'/'D' + u64
 * length, 'H'/'G' for the same with sha256 (and in RAW_TOOL CRC32C) over every byte in the guest, 'F'/'S' for
 * that and a tmpfs file in the guest written or read.
 */
type RawWork = 'none' | 'sha256' | 'sha256+file';

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

  private header(kind: 'U' | 'D' | 'H' | 'G' | 'F' | 'S', length: number): Buffer {
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

  /**
   * Host → guest: ms until the guest acknowledged every byte. `work`: what the guest does with them besides
   * reading (sha256; sha256 and a file written on its tmpfs, blocking tool only).
   */
  async upload(data: Buffer, work: RawWork = 'none'): Promise<number> {
    const acked = this.receive((_n, chunk) => chunk.includes(0x4b));
    const t0 = performance.now();
    this.socket.write(this.header(({ none: 'U', sha256: 'H', 'sha256+file': 'F' } as const)[work], data.length));
    for (let off = 0; off < data.length; off += MiB) {
      if (!this.socket.write(data.subarray(off, off + MiB))) await new Promise((r) => this.socket.once('drain', r));
    }
    await acked;
    return performance.now() - t0;
  }

  /**
   * Guest → host: ms until `length` bytes arrived. `work`: what the guest does besides writing them (sha256;
   * sha256 of bytes read from the file the last 'sha256+file' upload wrote, blocking tool only).
   */
  async download(length: number, work: RawWork = 'none'): Promise<number> {
    const all = this.receive((n) => n >= length);
    const t0 = performance.now();
    this.socket.write(this.header(({ none: 'D', sha256: 'G', 'sha256+file': 'S' } as const)[work], length));
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

/**
 * How fast a shell pipeline moves `bytes` in the guest, timed there (/proc/uptime, 10 ms steps) and run
 * through qemu-ga so the agent is idle: the command's own floor, which no agent can beat.
 */
async function guestPipelineMibs(qga: QgaClient, pipeline: string, bytes: number): Promise<number> {
  const r = await qga.exec('/bin/sh', ['-c', `read a b < /proc/uptime; ${pipeline}; s=$?; read c d < /proc/uptime; echo "$a $c"; exit $s`], 20);
  const [start, end] = r.stdout.toString().trim().split(' ').map(Number);
  if (r.code !== 0 || !(end > start)) throw new Error(`the guest pipeline "${pipeline}" exited ${r.code}, printing ${JSON.stringify(r.stdout.toString().slice(0, 200))}`);
  return mibPerSecond(bytes, (end - start) * 1000);
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

/** The guest programs the bench tells apart, by their command lines. */
type GuestProgram = 'agent' | 'qga' | 'raw-blocking' | 'raw-c' | 'raw-event-loop';

/**
 * Prints "<program> <utime+stime ticks> <VmRSS kB>" per process. Matched on argv[0]/argv[1] so the
 * shell running this script, whose command line holds these names too, is not counted.
 */
const PROC_PROBE = `for p in /proc/[0-9]*; do
  set -- $(tr '\\0' ' ' < $p/cmdline 2>/dev/null)
  case "$1|$2" in
    */porthole-agent\\|*|*/node\\|*/porthole-agent.cjs|*/porthole-spawn\\|*) who=agent;;
    */qemu-ga\\|*) who=qga;;
    */raw-c\\|*) who=raw-c;;
    */node\\|*/raw-blocking.js) who=raw-blocking;;
    */node\\|*/raw.js) who=raw-event-loop;;
    *) continue;;
  esac
  echo "$who $(awk '{print $14 + $15}' $p/stat) $(awk '/^VmRSS/{print $2}' $p/status)"
done`;

/** Guest process figures summed per program (Porthole's: the agent and porthole-spawn). */
type ProcSnapshot = Map<GuestProgram, { cpuSeconds: number; rssMib: number }>;

/** Linux's USER_HZ, the unit of /proc/<pid>/stat's times, on every architecture the test bed boots. */
const CLOCK_TICKS = 100;

function parseProbe(text: string): ProcSnapshot {
  const out: ProcSnapshot = new Map();
  for (const m of text.matchAll(/^(\S+) (\d+) (\d+)$/gm)) {
    const who = m[1] as GuestProgram;
    const prev = out.get(who) ?? { cpuSeconds: 0, rssMib: 0 };
    out.set(who, { cpuSeconds: prev.cpuSeconds + Number(m[2]) / CLOCK_TICKS, rssMib: prev.rssMib + Number(m[3]) / 1024 });
  }
  return out;
}

/**
 * Reads the guest's /proc through one agent while the program measured is another (or a raw tool),
 * so the reading costs the measured program nothing.
 */
class GuestProcs {
  constructor(private readonly client: PortholeClient, private readonly qga: QgaClient) {}

  async snapshot(via: 'agent' | 'qga'): Promise<ProcSnapshot> {
    if (via === 'qga') return parseProbe((await this.qga.exec('/bin/sh', ['-c', PROC_PROBE], 0)).stdout.toString());
    const task = this.client.exec({ shell: PROC_PROBE });
    const out: Buffer[] = [];
    task.stdout.on('data', (d: Buffer) => out.push(d));
    task.stderr.resume();
    await task.exit;
    return parseProbe(Buffer.concat(out).toString());
  }

  private static get(s: ProcSnapshot, who: GuestProgram): { cpuSeconds: number; rssMib: number } {
    const got = s.get(who);
    if (!got) throw new Error(`the guest /proc probe found no ${who} process`);
    return got;
  }

  /** Runs `run` and returns its ms and the guest CPU seconds `who` spent meanwhile. */
  async cpu(who: GuestProgram, run: () => Promise<number>): Promise<{ ms: number; cpuSeconds: number }> {
    const via = who === 'qga' ? 'agent' : 'qga';
    const before = GuestProcs.get(await this.snapshot(via), who).cpuSeconds;
    const ms = await run();
    return { ms, cpuSeconds: GuestProcs.get(await this.snapshot(via), who).cpuSeconds - before };
  }

  /**
   * Each agent's RSS in MiB, measured by the other one so the measured one is idle, and once Porthole's agent
   * has been idle long enough to give back what requests borrowed (its idle trim).
   */
  async idleRss(): Promise<{ agent: number; qga: number }> {
    await new Promise((r) => setTimeout(r, IDLE_TRIM_MS + 1000));
    return { agent: GuestProcs.get(await this.snapshot('qga'), 'agent').rssMib, qga: GuestProcs.get(await this.snapshot('agent'), 'qga').rssMib };
  }
}

/** The raw ports' tools, by port number (testbed RAW_TOOL_COMMANDS). */
const RAW_TOOLS: RawTool[] = ['blocking', 'c', 'event-loop'];

export async function benchVm(sizes: VmBenchSizes, log: (m: string) => void = () => undefined): Promise<BenchTable[]> {
  // The agent's audit lines go to a file, as journald would keep them: through the test bed's emulated
  // serial console each line costs ~2.5 ms of guest CPU, which a back-to-back exec then waits for.
  const vm: Vm = await bootVm({ agent: { bundle: agentBundlePath() }, agentLog: AGENT_LOG, rawTools: RAW_TOOLS, qemuGuestAgent: true, log });
  let client: PortholeClient | undefined;
  let qga: QgaClient | undefined;
  const raws: RawPort[] = [];
  try {
    client = await connect(vm.target, { timeoutMs: 90000 });
    qga = await QgaClient.connect(vm.qgaSocketPath!);
    for (const path of vm.rawSocketPaths) raws.push(await RawPort.connect(path));
    const [blocking, c, eventLoop] = raws;
    // The C tool is there where the test bed could compile it (gcc); without it the bench goes on without its rows.
    const hasC = (await qga.exec('/bin/sh', ['-c', 'test -x /opt/testbed/raw-c'], 0)).code === 0;
    const tables = await measure(sizes, client, qga, { blocking, c: hasC ? c : undefined, eventLoop }, log);
    // The qga back end needs the qga socket to itself (QEMU's chardev takes one client).
    qga.close();
    log('the broker\'s qemu-guest-agent back end beside Porthole\'s agent');
    tables.push(await benchQgaBackend(client, vm.qgaSocketPath!, sizes.fileBytes, sizes.execRuns));
    return tables;
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${vm.consoleTail(30)}`);
  } finally {
    for (const r of raws) r.close();
    qga?.close();
    client?.close();
    await vm.shutdown();
  }
}

interface RawPorts {
  /** Node, blocking readSync/writeSync loops, 1 MiB buffers. */
  blocking: RawPort;
  /** C read()/write() loops, 1 MiB buffers (absent where the test bed had no gcc). */
  c?: RawPort;
  /** Node, the port polled from the event loop (the test bed's original raw tool). */
  eventLoop: RawPort;
}

/** A figure measured once, with the guest CPU the program doing the work spent on it. */
interface Run { mibs: number; ms: number; cpuPerGib: number }

const GiB = 1024 * MiB;

const best = (a: Run, b?: Run) => (b && b.mibs > a.mibs ? b : a);

async function measure(sizes: VmBenchSizes, client: PortholeClient, qga: QgaClient, raw: RawPorts, log: (m: string) => void): Promise<BenchTable[]> {
  const bytes = sizes.fileBytes;
  const data = randomBytes(bytes);
  const sha = createHash('sha256').update(data).digest('hex');
  const procs = new GuestProcs(client, qga);
  const run = async (who: GuestProgram, moved: number, work: () => Promise<number>): Promise<Run> => {
    const { ms, cpuSeconds } = await procs.cpu(who, work);
    return { mibs: mibPerSecond(moved, ms), ms, cpuPerGib: cpuSeconds / (moved / GiB) };
  };
  // The references are upper bounds: the faster of two runs, so a noisy moment on this shared host does not lower them.
  const reference = async (who: GuestProgram, moved: number, work: () => Promise<number>): Promise<Run> => best(await run(who, moved, work), await run(who, moved, work));
  // Each raw tool is JIT-warmed by a first transfer, as the agent is by the runs before its own.
  const warm = Buffer.alloc(Math.min(bytes, 8 * MiB));
  const tools = [['blocking', raw.blocking], ['c', raw.c], ['event-loop', raw.eventLoop]] as const;
  for (const [, port] of tools) if (port) { await port.upload(warm); await port.download(warm.length); }

  log('idle RSS');
  const rssBefore = await procs.idleRss();

  log(`host → guest, ${bytes / MiB} MiB: raw (blocking, C, event loop), raw + sha256, Porthole, qemu-guest-agent`);
  const upBlocking = await reference('raw-blocking', bytes, () => raw.blocking.upload(data));
  const upC = raw.c ? await reference('raw-c', bytes, () => raw.c!.upload(data)) : undefined;
  const upEventLoop = await run('raw-event-loop', bytes, () => raw.eventLoop.upload(data));
  const upSha = await reference('raw-blocking', bytes, () => raw.blocking.upload(data, 'sha256'));
  const upShaFile = await reference('raw-blocking', bytes, () => raw.blocking.upload(data, 'sha256+file'));
  // Porthole twice, back to back: the first large transfer after the agent was idle is written while the agent
  // starts its hashing thread and read back by it, the next one goes to that thread as it comes.
  const inject = async () => {
    const installed = (await client.installFile(data, { path: GUEST_FILE }).result).sha256;
    if (installed !== sha) throw new Error(`Porthole wrote sha256 ${installed}, expected ${sha}`);
  };
  const upPhFirst = await run('agent', bytes, () => timed(inject));
  const upPhNext = await run('agent', bytes, () => timed(inject));
  const upPh = best(upPhFirst, upPhNext);
  const upQga = await run('qga', bytes, () => timed(() => qga.writeFile(QGA_FILE, data, QGA_CHUNK)));

  log(`guest → host, ${bytes / MiB} MiB: the same`);
  const downBlocking = await reference('raw-blocking', bytes, () => raw.blocking.download(bytes));
  const downC = raw.c ? await reference('raw-c', bytes, () => raw.c!.download(bytes)) : undefined;
  const downEventLoop = await run('raw-event-loop', bytes, () => raw.eventLoop.download(bytes));
  const downSha = await reference('raw-blocking', bytes, () => raw.blocking.download(bytes, 'sha256'));
  const downShaFile = await reference('raw-blocking', bytes, () => raw.blocking.download(bytes, 'sha256+file'));
  const readBack = async () => {
    const back = await portholeRead(client, GUEST_FILE);
    if (back.sha256 !== sha) throw new Error(`Porthole read back sha256 ${back.sha256}, expected ${sha}`);
  };
  const downPhFirst = await run('agent', bytes, () => timed(readBack));
  const downPhNext = await run('agent', bytes, () => timed(readBack));
  const downPh = best(downPhFirst, downPhNext);
  let qgaBack: Buffer = Buffer.alloc(0);
  const downQga = await run('qga', bytes, () => timed(async () => { qgaBack = await qga.readFile(QGA_FILE, QGA_CHUNK); }));
  if (!qgaBack.equals(data)) throw new Error(`qemu-guest-agent read back ${qgaBack.length} bytes that differ from the ${bytes} written`);

  const stdoutBytes = sizes.execStdoutBytes;
  log(`exec stdout: head -c ${stdoutBytes} /dev/zero`);
  let stdoutGot = 0;
  const execStdout = await run('agent', stdoutBytes, async () => {
    const t0 = performance.now();
    const task = client.exec(['head', '-c', String(stdoutBytes), '/dev/zero']);
    task.stdout.on('data', (d: Buffer) => { stdoutGot += d.length; });
    task.stderr.resume();
    const exit = await task.exit;
    if (exit.code !== 0) throw new Error(`Porthole exec head -c ${stdoutBytes} /dev/zero exited ${exit.code}`);
    return performance.now() - t0;
  });
  if (stdoutGot !== stdoutBytes) throw new Error(`Porthole exec head -c ${stdoutBytes} /dev/zero: ${stdoutGot} bytes of stdout arrived`);
  // The command's own floor in this guest: head alone, and head into a pipe read by cat (the faster of two runs each).
  const headAlone = `head -c ${stdoutBytes} /dev/zero`;
  const headFloor = async (pipeline: string) => Math.max(await guestPipelineMibs(qga, pipeline, stdoutBytes), await guestPipelineMibs(qga, pipeline, stdoutBytes));
  const headToNull = await headFloor(`${headAlone} > /dev/null`);
  const headToPipe = await headFloor(`${headAlone} | cat > /dev/null`);

  log(`info round trips idle, then beside a ${bytes / MiB} MiB injection and its read-back`);
  const info = () => timed(async () => { await client.info(); });
  const underInject = await measureUnderBulk(info, async () => { await client.installFile(data, { path: GUEST_FILE }).result; }, 30, { startMs: 200, gapMs: 50 });
  const underRead = await measureUnderBulk(info, async () => { await portholeRead(client, GUEST_FILE); }, 0, { startMs: 200, gapMs: 50 });

  log(`exec /bin/true × ${sizes.execRuns} each`);
  // Each tool runs in blocks of back-to-back runs (its own steady state: a command started right after
  // another one's starts faster in this guest), in two rounds of opposite order so drift hits both alike.
  const phExec: number[] = [];
  const qgaExec: number[] = [];
  const roundTrips: number[] = [];
  const block = async (into: number[], runs: number, once: () => Promise<number>) => {
    for (let i = 0; i < runs + 2; i++) {
      const ms = await once();
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
    // guest-exec then guest-exec-status back to back until it reports the exit: qemu-ga's fastest.
    (runs) => block(qgaExec, runs, () => timed(() => qga.exec('/bin/true', [], 0))),
    (runs) => block(roundTrips, runs, () => raw.blocking.roundTrip()),
  ];
  for (const order of [blocks, [...blocks].reverse()]) {
    for (const b of order) await b(Math.ceil(sizes.execRuns / 2));
  }

  log(`/bin/true × ${sizes.execRuns} started by porthole-spawn in the guest, timed there`);
  const processMs = (await guestProcessTimes(client, GUEST_SPAWN_HELPER, sizes.execRuns + 2)).slice(2);
  log(`/bin/true × ${sizes.execRuns} started and reaped by a C program in the guest, timed there`);
  const spawnMs = (await guestSpawnTimes(client, GUEST_SPAWN_TIMER, sizes.execRuns + 2))?.slice(2);

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
  const rssAfter = await procs.idleRss();

  // The true raw reference: the faster plain reader/writer of the port, per direction.
  const trueUp = best(upBlocking, upC);
  const trueDown = best(downBlocking, downC);
  const row = (direction: string, method: string, r: { raw: Run; sha: Run; qga: Run }, x: Run) =>
    [direction, method, x.mibs, x.ms / 1000, x.mibs / r.raw.mibs, x.mibs / r.sha.mibs, x.mibs / r.qga.mibs, x.cpuPerGib];
  type Runs = { raw: Run; blocking: Run; c?: Run; sha: Run; shaFile?: Run; eventLoop: Run; phFirst: Run; phNext: Run; qga: Run };
  const up: Runs = { raw: trueUp, blocking: upBlocking, c: upC, sha: upSha, shaFile: upShaFile, eventLoop: upEventLoop, phFirst: upPhFirst, phNext: upPhNext, qga: upQga };
  const down: Runs = { raw: trueDown, blocking: downBlocking, c: downC, sha: downSha, shaFile: downShaFile, eventLoop: downEventLoop, phFirst: downPhFirst, phNext: downPhNext, qga: downQga };
  const direction = (name: string, r: Runs, words: { sync: string; loop: string; ph: string; qga: string; file: string; first: string }) => [
    row(name, `raw port, Node blocking ${words.sync} loop, 1 MiB buffer`, r, r.blocking),
    ...(r.c ? [row(name, 'raw port, C read()/write() loop, 1 MiB buffer', r, r.c)] : []),
    row(name, 'raw port + sha256 in the guest (blocking loop)', r, r.sha),
    ...(r.shaFile ? [row(name, `raw port + sha256 + ${words.file} (blocking loop)`, r, r.shaFile)] : []),
    row(name, `raw port, Node event-loop ${words.loop} (for comparison)`, r, r.eventLoop),
    row(name, `Porthole ${words.ph}, the first after ≥ ${IDLE_TRIM_MS / 1000} s idle (${words.first})`, r, r.phFirst),
    row(name, `Porthole ${words.ph}, the next one at once (sha256 on the agent's hashing thread)`, r, r.phNext),
    row(name, `qemu-guest-agent ${words.qga}`, r, r.qga),
  ];
  const med = (v: number[]) => percentile(v, 50);
  const throughput: BenchTable = {
    title: `VM file transfer, ${bytes / MiB} MiB, one QEMU (TCG) guest`,
    columns: ['direction', 'method', 'MiB/s', 'seconds', 'ratio to true raw', 'ratio to true raw + sha256', 'ratio to qga', 'guest CPU s per GiB'],
    rows: [
      ...direction('host → guest', up, { sync: 'readSync', loop: 'reader', ph: 'installFile', qga: 'guest-file-write', file: 'each MiB written to a new tmpfs file, renamed at the end',
        first: 'written while the hashing thread starts, then read back by it' }),
      ...direction('guest → host', down, { sync: 'writeSync', loop: 'writer', ph: 'readFile', qga: 'guest-file-read', file: 'each MiB read from a tmpfs file first',
        first: "sha256 on the agent's event loop" }),
      ['guest → host', `Porthole exec stdout of head -c ${stdoutBytes / MiB} MiB of /dev/zero`, execStdout.mibs, execStdout.ms / 1000, execStdout.mibs / trueDown.mibs, execStdout.mibs / downSha.mibs, execStdout.mibs / downQga.mibs, execStdout.cpuPerGib],
      ['in the guest', `the same head -c to /dev/null, no reader (the command alone)`, headToNull, stdoutBytes / MiB / headToNull, headToNull / trueDown.mibs, '', '', ''],
      ['in the guest', `the same head -c into a pipe read by cat (the floor for its output)`, headToPipe, stdoutBytes / MiB / headToPipe, headToPipe / trueDown.mibs, '', '', ''],
    ],
    notes: [
      `true raw: the faster of the plain readers/writers (${trueUp === upBlocking ? 'Node' : 'C'} host → guest, ${trueDown === downBlocking ? 'Node' : 'C'} guest → host) on another port of the same virtio-serial device, bytes discarded (or zeros sent): what the port moves with nothing on top — the reference every ratio and floor here is taken against`,
      'true raw + sha256: the same blocking loop hashing every byte in the guest with Node\'s crypto, started by the agent\'s launcher as the agent is (on this emulated CPU OpenSSL\'s plain x86-64 sha256, ~1.4× its AVX2 code here) — the floor for a protocol that checks what it moves',
      '… + each MiB written to a new tmpfs file: the same loop also writing what it read (writeSync, 1 MiB at a time) to a new file, fsynced, closed and renamed into place before it answers — the floor for a checked file injection, which must write the file; … + each MiB read from a tmpfs file: the same loop sending that file\'s bytes (readSync, 1 MiB at a time) — the floor for a checked read-back',
      'event-loop reader: the test bed\'s earlier raw tool, the port polled by libuv as the agent polls its own (4 KiB per read under TCG); kept to show what that costs',
      `Porthole: file data in ${chunkSizeFor(SLOW_PORT_STREAM_WINDOW, DEFAULT_MAX_FRAME_SIZE) / 1024} KiB messages to the agent and ${chunkSizeFor(DEFAULT_STREAM_WINDOW, DEFAULT_MAX_FRAME_SIZE) / 1024} KiB ones from it (the largest of which two fit the receiver's window), written to the guest's tmpfs atomically, sha256 checked both ways; exec stdout counted on the host`,
      'head -c in the guest: the guest\'s busybox head, run through qemu-ga and timed in the guest (10 ms steps), the faster of two runs; "ratio to true raw" there is against guest → host',
      `qemu-guest-agent (Debian's qemu-ga in the same guest): guest-file-open/write/close, base64 in JSON, ${QGA_CHUNK / MiB} MiB per command, one command in flight`,
      'guest CPU: utime + stime from /proc/<pid>/stat in the guest of the program doing the work (Porthole: the agent and porthole-spawn, not the commands it runs; raw: its tool; qga: qemu-ga), read before and after each run through the other agent; scaled to one GiB',
      `Porthole's first transfer each way follows more than ${IDLE_TRIM_MS / 1000} s without a request, after which the agent has ended its hashing thread: a transfer of ${OFF_THREAD_MIN / MiB} MiB or more that finds none starts it and hashes on the event loop meanwhile; the next transfer, at once, hashes on it`,
      'raw and raw + sha256: the faster of two runs (they are the references, upper bounds); Porthole\'s transfers two runs (the targets take the faster, as for the references); the rest one run each; every raw tool warmed up by 8 MiB each way first; the guest\'s two vCPUs share this host\'s two cores with QEMU and the broker',
    ],
  };
  // The fastest way to start and reap the process that was measured: a floor is one only if nothing beats it.
  const fastestProcessMs = Math.min(med(processMs), spawnMs ? med(spawnMs) : Infinity);
  const floorMs = med(roundTrips) + fastestProcessMs;
  const exec: BenchTable = {
    title: 'VM exec and output latency, one QEMU (TCG) guest',
    columns: ['measure', 'Porthole', 'qemu-guest-agent', 'ratio Porthole / qga'],
    rows: [
      [`exec /bin/true round trip p50, ms (${phExec.length} runs)`, med(phExec), med(qgaExec), med(phExec) / med(qgaExec)],
      ['exec /bin/true round trip p95, ms', percentile(phExec, 95), percentile(qgaExec, 95), percentile(phExec, 95) / percentile(qgaExec, 95)],
      [`first output line of "${script}", ms (p50 of ${sizes.firstLineRuns})`, med(phFirst), med(qgaFirst), med(phFirst) / med(qgaFirst)],
      ['same command, exit seen by the host, ms', med(phFirstExit), med(qgaFirst), med(phFirstExit) / med(qgaFirst)],
      [`true raw port round trip p50, ms (1 byte there, 1 back, blocking tool; ${roundTrips.length} runs)`, med(roundTrips), '', ''],
      [`/bin/true started and reaped in the guest p50, ms (porthole-spawn alone, asked by a Node script there; ${processMs.length} runs)`, med(processMs), '', ''],
      ...(spawnMs ? [[`/bin/true started (vfork, exec) and reaped by a C program in the guest p50, ms (${spawnMs.length} runs)`, med(spawnMs), '', ''] as BenchTable['rows'][number]] : []),
      ['floor for any agent: true raw round trip + the faster process figure, ms', floorMs, '', floorMs / med(qgaExec)],
      ['idle RSS after boot, MiB', rssBefore.agent, rssBefore.qga, rssBefore.agent / rssBefore.qga],
      ['idle RSS after these runs, MiB', rssAfter.agent, rssAfter.qga, rssAfter.agent / rssAfter.qga],
    ],
    notes: [
      'qemu-guest-agent exec: guest-exec, then guest-exec-status back to back until it reports the exit (its fastest way)',
      `each tool runs in blocks of back-to-back commands, in two rounds of opposite order; the agent logs one audit line per request to ${AGENT_LOG} in the guest (qemu-ga logs nothing per command), not to the test bed's serial console`,
      'qemu-guest-agent has no streaming: guest-exec-status returns captured output only once the process exited',
      'first line: from the host sending the request to the host holding the line (both clocks on the host)',
      `RSS: VmRSS of each agent process, read while it was idle (the probe ran through the other agent), ${IDLE_TRIM_MS / 1000 + 1} s after its last request (Porthole's agent gives back what requests borrowed after ${IDLE_TRIM_MS / 1000} s idle); the Porthole agent is Node (the JS bundle, started by its launcher as its systemd unit starts it: no JIT, and on this emulated CPU OpenSSL's plain x86-64 sha256) plus porthole-spawn (C, started at the first command), qemu-ga is C`,
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
  const target = (measureText: string, now: number, goal: string, met: boolean) => [measureText, goal, now, met ? 'yes' : 'no'];
  const targets: BenchTable = {
    title: 'VM: issue 22 targets, target vs now (all figures from this one run)',
    columns: ['measure', 'target', 'now', 'met'],
    rows: [
      target(`inject (installFile) / true raw, host → guest (the first after idle: ${(upPhFirst.mibs / trueUp.mibs).toFixed(2)})`, upPh.mibs / trueUp.mibs, '≥ 0.4', upPh.mibs / trueUp.mibs >= 0.4),
      target(`inject / true raw + sha256 in the guest, host → guest (the first after idle: ${(upPhFirst.mibs / upSha.mibs).toFixed(2)})`, upPh.mibs / upSha.mibs, '≥ 0.8', upPh.mibs / upSha.mibs >= 0.8),
      target(`read-back (readFile) / true raw + sha256 in the guest, guest → host (the first after idle: ${(downPhFirst.mibs / downSha.mibs).toFixed(2)})`, downPh.mibs / downSha.mibs, '≥ 0.8', downPh.mibs / downSha.mibs >= 0.8),
      target(`exec stdout (head -c ${stdoutBytes / MiB} MiB, ${execStdout.mibs.toFixed(1)} MiB/s) / true raw, guest → host`, execStdout.mibs / trueDown.mibs, '≥ 0.4', execStdout.mibs / trueDown.mibs >= 0.4),
      target(`info p50 beside a ${bytes / MiB} MiB injection / idle p50`, med(underInject.loaded) / idleInfo, '≤ 2', med(underInject.loaded) / idleInfo <= 2),
      target('exec /bin/true p50 / qemu-ga guest-exec + status back to back', med(phExec) / med(qgaExec), '≤ 1.0', med(phExec) / med(qgaExec) <= 1),
      target('exec /bin/true p95 / qemu-ga p95', percentile(phExec, 95) / percentile(qgaExec, 95), '≤ 1.5', percentile(phExec, 95) / percentile(qgaExec, 95) <= 1.5),
      target('agent idle RSS after boot, MiB', rssBefore.agent, '≤ 45', rssBefore.agent <= 45),
      target('agent idle RSS after the runs, MiB', rssAfter.agent, '≤ 60', rssAfter.agent <= 60),
      target(`guest CPU s per GiB injected, Porthole / qemu-ga (${upPh.cpuPerGib.toFixed(1)} / ${upQga.cpuPerGib.toFixed(1)})`, upPh.cpuPerGib / upQga.cpuPerGib, '≤ 1.0', upPh.cpuPerGib <= upQga.cpuPerGib),
    ],
    notes: [
      `Porthole's transfers: the faster of two back to back (the first table has both), as the references are the faster of two`,
      `true raw here: ${trueUp.mibs.toFixed(1)} MiB/s host → guest, ${trueDown.mibs.toFixed(1)} MiB/s guest → host; true raw + sha256: ${upSha.mibs.toFixed(1)} and ${downSha.mibs.toFixed(1)} MiB/s (first table)`,
      `true raw + sha256 + the file written (the floor of a checked injection): ${upShaFile.mibs.toFixed(1)} MiB/s; Porthole's injection is ${(upPh.mibs / upShaFile.mibs).toFixed(2)} of that`,
      `true raw + sha256 + the file read (the floor of a checked read-back): ${downShaFile.mibs.toFixed(1)} MiB/s; Porthole's read-back is ${(downPh.mibs / downShaFile.mibs).toFixed(2)} of that`,
      `exec stdout's own floor in this guest: head -c alone ${headToNull.toFixed(1)} MiB/s, head -c into a pipe read by cat ${headToPipe.toFixed(1)} MiB/s (${(headToPipe / trueDown.mibs).toFixed(2)} of true raw); Porthole's exec stdout is ${(execStdout.mibs / headToPipe).toFixed(2)} of that`,
    ],
  };
  return [targets, throughput, exec, beside];
}
