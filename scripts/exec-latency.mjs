// Exec round trip of /bin/true through Porthole's agent and through qemu-guest-agent in one test-bed VM,
// in alternating blocks (a quicker look than the bench's vm section, for work on the agent's exec path).
//   node scripts/exec-latency.mjs [RUNS=200] [AGENT_BUNDLE]
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';

const require = createRequire(import.meta.url);
const { bootVm, agentBundlePath } = require('../packages/testbed/dist/index.js');
const { connect } = require('../packages/broker/dist/index.js');
const { QgaClient } = require('../packages/qga/dist/index.js');

const runs = Number(process.argv[2] ?? 200);
const bundle = process.argv[3] ?? agentBundlePath();
const vm = await bootVm({ agent: { bundle }, agentLog: '/run/porthole-agent.log', qemuGuestAgent: true, rawPorts: 0, log: (m) => console.error(m) });
try {
  const client = await connect(vm.target, { timeoutMs: 90000 });
  const qga = await QgaClient.connect(vm.qgaSocketPath);
  const timed = async (f) => { const t0 = performance.now(); await f(); return performance.now() - t0; };
  const porthole = () => timed(async () => {
    const task = client.exec(['/bin/true']);
    task.stdout.resume();
    task.stderr.resume();
    const exit = await task.exit;
    if (exit.code !== 0) throw new Error(`exit ${exit.code}`);
  });
  const qgaRun = () => timed(() => qga.exec('/bin/true', [], 0));
  const results = { porthole: [], qga: [] };
  // utime+stime ticks of the agent (and its spawn helper) and of qemu-ga, read through qemu-ga.
  const probe = `for p in /proc/[0-9]*; do c=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null); case "$c" in *porthole-agent*|*porthole-spawn*) a=$((a + $(cut -d' ' -f14 $p/stat) + $(cut -d' ' -f15 $p/stat)));; *qemu-ga*) q=$((q + $(cut -d' ' -f14 $p/stat) + $(cut -d' ' -f15 $p/stat)));; esac; done; echo \${a:-0} \${q:-0}`;
  const ticks = async () => (await qga.exec('/bin/sh', ['-c', probe], 0)).stdout.toString().trim().split(' ').map(Number);
  const cpu = { porthole: 0, qga: 0 };
  const block = async (name, f, n) => {
    const before = await ticks();
    for (let i = 0; i < n + 2; i++) { const ms = await f(); if (i >= 2) results[name].push(ms); }
    const after = await ticks();
    cpu[name] += after[name === 'porthole' ? 0 : 1] - before[name === 'porthole' ? 0 : 1];
  };
  for (let round = 0; round < 4; round++) {
    const order = round % 2 ? [['qga', qgaRun], ['porthole', porthole]] : [['porthole', porthole], ['qga', qgaRun]];
    for (const [name, f] of order) await block(name, f, Math.ceil(runs / 4));
  }
  const pct = (a, p) => { const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]; };
  const p = results.porthole, q = results.qga;
  console.log(`porthole p50 ${pct(p, 50).toFixed(2)} p95 ${pct(p, 95).toFixed(2)} | qga p50 ${pct(q, 50).toFixed(2)} p95 ${pct(q, 95).toFixed(2)} | ratio p50 ${(pct(p, 50) / pct(q, 50)).toFixed(2)} p95 ${(pct(p, 95) / pct(q, 95)).toFixed(2)}`);
  console.log(`guest CPU per run (ms, 10 ms ticks): porthole agent+helper ${(cpu.porthole * 10 / (p.length + 8)).toFixed(2)}, qemu-ga ${(cpu.qga * 10 / (q.length + 8)).toFixed(2)} (the probes themselves are counted on qemu-ga's side)`);
  client.close();
  qga.close();
} finally {
  await vm.shutdown();
}
