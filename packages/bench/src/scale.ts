// Scale of one broker daemon: N agents on Unix sockets stand in for N VMs behind one
// `porthole serve`. N exec tasks at once over REST (sessions opened on demand, then held),
// N library clients at once through the daemon's socket, the daemon's memory per VM session
// and its CPU while idle; 1024 idle VMs worked out from the memory measured per session.
// PORTHOLE_BENCH_SCALE_BASELINE=<checkout>/packages/broker/dist/cli.js runs the REST rounds
// against that checkout's `porthole serve` too, on agents of its own, in the same run.
import { ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect } from '@porthole/broker';
import { standInSocket } from './scale-agents';
import { BenchTable } from './table';

export interface ScaleBenchOptions {
  vms: number;
  /** How long the daemon's CPU is watched while idle, s. */
  idleSeconds: number;
  /** Another checkout's packages/broker/dist/cli.js to compare with. */
  baseline?: string;
}

/** Measured on 2026-12-06 with `porthole serve` before it became the host's daemon (issue 23): 256 agents. */
const REFERENCE = { vms: 256, warmSeconds: 9.4, coldSeconds: 22, rssBeforeMiB: 79, rssAfterMiB: 113 };

const PAPER_VMS = 1024;
/** Clock ticks per second of /proc/PID/stat (USER_HZ; 100 on Linux x86-64). */
const USER_HZ = 100;
/**
 * Agents per process. A VM's agent has a guest to itself; stand-ins that share a process share its
 * event loop, and the first command of each starts its porthole-spawn (a fork of that process): in one
 * process, 256 of them held each other up past the broker's 10 s wait for a hello.
 */
const AGENTS_PER_PROCESS = 16;
/** VMs a daemon works on before its memory is first read (code compiled, buffers pooled). */
const WARM_UP_VMS = 4;

/** User + system CPU seconds a process has used. */
function cpuSeconds(pid: number): number {
  // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / USER_HZ;
}

interface Child {
  process: ChildProcess;
  /** Everything it printed so far. */
  out(): string;
}

/** A child process, once it printed a line matching `ready`. */
function startChild(args: string[], ready: RegExp, what: string): Promise<Child> {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr!.on('data', (b: Buffer) => { err = (err + b.toString()).slice(-4000); });
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (ready.test(out)) resolve({ process: child, out: () => out });
    });
    child.once('exit', (code) => reject(new Error(`${what} exited (${code}) before it was ready: ${err.trim()}`)));
  });
}

/** The daemon's RSS after a full garbage collection, MiB. */
async function collectedRss(daemon: Child): Promise<number> {
  const collections = () => (daemon.out().match(/collected\n/g) ?? []).length;
  const before = collections();
  daemon.process.kill('SIGUSR2');
  while (collections() === before) await sleep(50);
  await sleep(500);
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${daemon.process.pid}/status`, 'utf8'))![1]) / 1024;
}

function request(socketPath: string, method: string, path: string, body?: unknown): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, method, path, headers: body === undefined ? {} : { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (s: string) => (text += s));
      res.once('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.once('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

interface Round {
  seconds: number;
  failed: number;
  /** The distinct causes of the failures, with how often each came. */
  causes: Map<string, number>;
}

/** `one` for every VM at once; it answers undefined when the VM's work went right, else the cause. */
async function round(vms: number[], one: (vm: number) => Promise<string | undefined>): Promise<Round> {
  const t0 = performance.now();
  const results = await Promise.all(vms.map((vm) => one(vm).catch((err: Error) => err.message)));
  const causes = new Map<string, number>();
  for (const cause of results) {
    // The VM's number and path make every cause distinct: counted without them.
    if (cause !== undefined) {
      const key = cause.replace(/vm-\d+\.sock/g, 'vm-N.sock').slice(0, 200);
      causes.set(key, (causes.get(key) ?? 0) + 1);
    }
  }
  return { seconds: (performance.now() - t0) / 1000, failed: results.filter((r) => r !== undefined).length, causes };
}

/** VMs first..first+count-1. */
const range = (first: number, count: number) => Array.from({ length: count }, (_, i) => first + i);

/** One exec task per VM over REST; done when its output stream ended with exit 0 and its output. */
const restExec = (sock: string, dir: string) => async (vm: number): Promise<string | undefined> => {
  const started = await request(sock, 'POST', '/v1/tasks/exec', { target: `unix:${standInSocket(dir, vm)}`, argv: ['echo', `vm ${vm}`] });
  if (started.status !== 202) return `HTTP ${started.status}: ${started.text}`;
  const { id } = JSON.parse(started.text) as { id: string };
  const lines = (await request(sock, 'GET', `/v1/tasks/${id}/output?encoding=utf8`)).text.trim().split('\n')
    .map((l) => JSON.parse(l) as { text?: string; task?: { status: string; result?: { code: number }; error?: { message: string } } });
  const end = lines.pop()?.task;
  if (end?.status !== 'done') return `task ${end?.status}: ${end?.error?.message}`;
  if (end.result?.code !== 0 || lines.map((l) => l.text).join('') !== `vm ${vm}\n`) return `exit ${end.result?.code}, wrong output`;
  return undefined;
};

/** One library client per VM through the daemon's socket (what `porthole exec` does): connect, exec, close. */
const libraryExec = (sock: string, dir: string) => async (vm: number): Promise<string | undefined> => {
  const client = await connect(`unix:${standInSocket(dir, vm)}`, { broker: sock, timeoutMs: 120000 });
  try {
    const task = client.exec(['echo', `vm ${vm}`]);
    let out = '';
    task.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exit = await task.exit;
    return exit.code === 0 && out === `vm ${vm}\n` ? undefined : `exit ${exit.code}, wrong output`;
  } finally {
    client.close();
  }
};

interface DaemonRun {
  cold: Round;
  warm: Round;
  /** CPU seconds the daemon spent on the cold and the warm round. */
  coldCpu: number;
  warmCpu: number;
  library?: Round;
  rssWarmedUp: number;
  rssHeld: number;
  cpuEmpty: number;
  cpuHeld: number;
  sessions: number;
}

/**
 * One daemon (from `cli`) over VMs first..first+WARM_UP_VMS+vms-1: idle CPU, a warm-up, the rounds,
 * idle CPU with the sessions held, and its memory after full garbage collections.
 */
async function runDaemon(cli: string, serveArgs: string[], dir: string, first: number, vms: number, idleSeconds: number, withLibrary: boolean, log: (m: string) => void): Promise<DaemonRun> {
  const sock = join(dir, `broker-${first}.sock`);
  const daemon = await startChild(['--expose-gc', require.resolve('./scale-daemon'), cli, '--listen', `unix:${sock}`, '--journal', join(dir, `journal-${first}.bin`), ...serveArgs],
    /listening on /, 'porthole serve');
  const pid = daemon.process.pid!;
  try {
    await sleep(2000);
    const cpu0 = cpuSeconds(pid);
    await sleep(idleSeconds * 1000);
    const cpuEmpty = (cpuSeconds(pid) - cpu0) / idleSeconds;
    const measured = range(first + WARM_UP_VMS, vms);
    const warmUp = await round(range(first, WARM_UP_VMS), restExec(sock, dir));
    if (warmUp.failed) throw new Error(`the warm-up failed: ${[...warmUp.causes.keys()].join('; ')}`);
    const rssWarmedUp = await collectedRss(daemon);
    log(`  ${vms} exec tasks at once over REST, cold (each VM's session opened on demand)`);
    const cpuCold = cpuSeconds(pid);
    const cold = await round(measured, restExec(sock, dir));
    const coldCpu = cpuSeconds(pid) - cpuCold;
    log(`    ${cold.seconds.toFixed(1)} s, ${cold.failed} failed; again with the sessions held`);
    const cpuWarm = cpuSeconds(pid);
    const warm = await round(measured, restExec(sock, dir));
    const warmCpu = cpuSeconds(pid) - cpuWarm;
    log(`    ${warm.seconds.toFixed(1)} s, ${warm.failed} failed; idle for ${idleSeconds} s with the sessions held`);
    await sleep(2000);
    const cpu1 = cpuSeconds(pid);
    await sleep(idleSeconds * 1000);
    const cpuHeld = (cpuSeconds(pid) - cpu1) / idleSeconds;
    // Read where both daemons of a comparison did the same work.
    const rssHeld = await collectedRss(daemon);
    let library: Round | undefined;
    if (withLibrary) {
      log(`  ${vms} library clients at once through the daemon's socket`);
      library = await round(measured, libraryExec(sock, dir));
      log(`    ${library.seconds.toFixed(1)} s, ${library.failed} failed`);
    }
    return { cold, warm, coldCpu, warmCpu, library, rssWarmedUp, rssHeld, cpuEmpty, cpuHeld, sessions: vms + WARM_UP_VMS };
  } finally {
    daemon.process.kill('SIGKILL');
  }
}

export async function benchScale(opts: ScaleBenchOptions, log: (m: string) => void = () => undefined): Promise<BenchTable> {
  const { vms, idleSeconds, baseline } = opts;
  const perDaemon = WARM_UP_VMS + vms;
  const agents = baseline ? 2 * perDaemon : perDaemon;
  const dir = mkdtempSync(join(tmpdir(), 'porthole-bench-scale-'));
  const children: Child[] = [];
  try {
    log(`starting ${agents} agents on Unix sockets, ${AGENTS_PER_PROCESS} to a process`);
    for (let first = 0; first < agents; first += AGENTS_PER_PROCESS) {
      children.push(await startChild([require.resolve('./scale-agents'), dir, String(first), String(Math.min(AGENTS_PER_PROCESS, agents - first))], /ready\n/, 'the agents'));
    }
    log('the broker daemon');
    const ours = await runDaemon(require.resolve('@porthole/broker/cli'), ['--idle-timeout', '86400', '--log-level', 'warn'], dir, 0, vms, idleSeconds, true, log);
    let theirs: DaemonRun | undefined;
    if (baseline) {
      log(`the baseline: ${baseline}, on agents of its own`);
      theirs = await runDaemon(baseline, ['--log-level', 'warn'], dir, perDaemon, vms, idleSeconds, false, log);
    }

    const perSession = (r: DaemonRun) => (r.rssHeld - r.rssWarmedUp) / vms;
    const paperRss = (r: DaemonRun) => r.rssWarmedUp + PAPER_VMS * perSession(r);
    const paperCpu = (r: DaemonRun) => (r.cpuEmpty + (r.cpuHeld - r.cpuEmpty) * (PAPER_VMS / vms)) * 100;
    const failed = (r: DaemonRun) => r.cold.failed + r.warm.failed + (r.library?.failed ?? 0);
    const ref = REFERENCE;
    const refPerVm = (ref.rssAfterMiB - ref.rssBeforeMiB) / ref.vms;
    const other = theirs
      ? (f: (r: DaemonRun) => string | number) => f(theirs!)
      : undefined;
    const rssText = (r: DaemonRun) => `${r.rssWarmedUp.toFixed(1)} → ${r.rssHeld.toFixed(1)}`;
    const causes = [...[ours.cold, ours.warm, ours.library!].flatMap((r) => [...r.causes]), ...(theirs ? [theirs.cold, theirs.warm].flatMap((r) => [...r.causes]) : [])];
    return {
      title: `Scale: ${vms} agents on Unix sockets as VMs behind one broker daemon`,
      columns: ['measure', 'broker daemon', theirs ? 'baseline: the given checkout\'s porthole serve, same run' : `reference: porthole serve before the daemon model, ${ref.vms} agents (issue 23, 2026-12-06)`],
      rows: [
        [`${vms} exec tasks at once over REST, cold (VM sessions opened on demand): s until all ended`, ours.cold.seconds, other?.((r) => r.cold.seconds) ?? ref.coldSeconds],
        ['the same with the sessions held: s until all ended', ours.warm.seconds, other?.((r) => r.warm.seconds) ?? ref.warmSeconds],
        ['broker CPU time spent on the cold round → on the warm round, s', `${ours.coldCpu.toFixed(1)} → ${ours.warmCpu.toFixed(1)}`, other?.((r) => `${r.coldCpu.toFixed(1)} → ${r.warmCpu.toFixed(1)}`) ?? '-'],
        [`${vms} library clients at once through the daemon's socket (as porthole exec): s until all ended`, ours.library!.seconds, '- (a VM\'s channel takes one client)'],
        ['failed', failed(ours), other?.(failed) ?? 0],
        [`broker RSS after a warm-up (${WARM_UP_VMS} VMs) → with ${vms} more sessions held, MiB (after a full GC)`, rssText(ours), other?.(rssText) ?? `${ref.rssBeforeMiB} → ${ref.rssAfterMiB}`],
        ['broker RSS per VM session, KiB', perSession(ours) * 1024, other?.((r) => perSession(r) * 1024) ?? refPerVm * 1024],
        [`broker CPU while idle, % of one core: no session → ${ours.sessions} sessions held`, `${(ours.cpuEmpty * 100).toFixed(2)} → ${(ours.cpuHeld * 100).toFixed(2)}`,
          other?.((r) => `${(r.cpuEmpty * 100).toFixed(2)} → ${(r.cpuHeld * 100).toFixed(2)}`) ?? '-'],
        [`on paper, ${PAPER_VMS} idle VMs with sessions held: broker RSS, MiB`, paperRss(ours), other?.(paperRss) ?? ref.rssBeforeMiB + PAPER_VMS * refPerVm],
        [`on paper, ${PAPER_VMS} idle VMs with sessions held: broker CPU, % of one core`, paperCpu(ours), other?.(paperCpu) ?? '-'],
      ],
      notes: [
        `stand-ins: the real agent, ${AGENTS_PER_PROCESS} to a process, each on its own Unix socket as QEMU's chardev would be; each task runs \`echo\` in a process of its own, started through the agent's porthole-spawn`,
        'REST: POST /v1/tasks/exec, then GET /v1/tasks/{id}/output until its end line, all at once over the daemon\'s Unix socket; a task counts as done with exit 0 and its output',
        'library: connect() through the daemon (what the CLI does when the daemon runs), one exec, close; the daemon relays each client\'s streams onto the VM\'s shared session',
        `memory: RSS after a full garbage collection (node --expose-gc, on SIGUSR2), after the warm-up and after the two REST rounds (before the library round, so both columns did the same work); per session: the difference over ${vms}; on paper: the first reading plus ${PAPER_VMS} sessions. CPU: /proc/PID/stat over ${idleSeconds} s idle, scaled the same way (a held session is mostly a keepalive ping every 5 s)`,
        'sessions nobody used for --idle-timeout (60 s by default, a day here, to measure them) are closed, so an idle VM usually costs the daemon nothing',
        ...(causes.length ? [`failures: ${causes.map(([cause, n]) => `${n} × ${cause}`).join('; ')}`] : []),
        theirs ? `baseline: ${baseline}` : 'the reference column is the issue\'s measurement of the earlier `porthole serve` (one connection per target, no daemon socket), not re-run here',
      ],
    };
  } finally {
    for (const c of children) c.process.kill('SIGKILL');
    await sleep(200);
    rmSync(dir, { recursive: true, force: true });
  }
}
