// Compare ways of running the agent in one test-bed VM (docs/BENCHMARKS.md, "The idle agent under 45 MiB"):
// for each setting the agent is restarted under that command (the test bed's init loop re-reads
// /etc/testbed/agent-cmd), a host says hello, and after 7 s of idle (past the agent's idle trim) its VmRSS and
// RssAnon are read through qemu-ga; then /bin/true runs N times through it and N times through qemu-ga, and
// MIB MiB are injected (installFile to the guest's tmpfs) with the agent's guest CPU per GiB, read back, and
// written by `head -c` to a command's stdout.
// Settings take turns, ROUNDS times. A setting is the agent's command line without --channel/--config, e.g.
//   node scripts/agent-settings.mjs '{"unit": "/usr/lib/porthole/porthole-agent-env /usr/bin/node /opt/porthole/porthole-agent.cjs",
//     "one-arena": "env MALLOC_ARENA_MAX=1 /usr/lib/porthole/porthole-agent-env /usr/bin/node /opt/porthole/porthole-agent.cjs"}' [ROUNDS=2] [N=60] [MIB=32]
// (words split by the shell, no quoting; the bundle of `npm run build`, or AGENT_BUNDLE, is at /opt/porthole/porthole-agent.cjs;
// AGENT_BUNDLES=old=/tmp/old.cjs puts another build at /opt/porthole/porthole-agent-old.cjs).
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

const require = createRequire(import.meta.url);
const { bootVm, agentBundlePath } = require('../packages/testbed/dist/index.js');
const { connect } = require('../packages/broker/dist/index.js');
const { QgaClient } = require('../packages/qga/dist/index.js');

const settings = JSON.parse(process.argv[2]);
const rounds = Number(process.argv[3] ?? 2);
const runs = Number(process.argv[4] ?? 60);
const mib = Number(process.argv[5] ?? 32);
const payload = Buffer.alloc(mib << 20, 0x5a);
const pct = (a, p) => { const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]; };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Other builds of the agent to compare, as AGENT_BUNDLES=name=/host/path,...: each at /opt/porthole/porthole-agent-NAME.cjs in the guest.
const files = (process.env.AGENT_BUNDLES ?? '').split(',').filter(Boolean).map((entry) => {
  const [name, path] = entry.split('=');
  return { path: `/opt/porthole/porthole-agent-${name}.cjs`, content: readFileSync(path) };
});
const vm = await bootVm({ agent: { bundle: process.env.AGENT_BUNDLE ?? agentBundlePath() }, agentLog: '/run/porthole-agent.log', qemuGuestAgent: true, rawPorts: 0, files, log: (m) => console.error(m) });
try {
  const qga = await QgaClient.connect(vm.qgaSocketPath);
  const sh = async (c) => (await qga.exec('/bin/sh', ['-c', `${c} 2>&1`], 0)).stdout.toString().trim();
  // Processes whose command line matches, except this probe's own shell (its text holds the pattern).
  const pids = (pattern) => `for q in /proc/[0-9]*; do case "$(tr '\\0' ' ' < $q/cmdline 2>/dev/null)" in /bin/sh*) ;; ${pattern}) echo \${q#/proc/};; esac; done`;
  const agentPids = pids('/usr/bin/node*porthole-agent*|/opt/porthole/porthole-agent*');
  const cpuTicks = `t=0; for p in $(${pids('/usr/bin/node*porthole-agent*|/opt/porthole/porthole-agent*|*porthole-spawn*')}); do t=$((t + $(cut -d' ' -f14 /proc/$p/stat) + $(cut -d' ' -f15 /proc/$p/stat))); done; echo $t`;
  for (let round = 0; round < rounds; round++) {
    // Each round starts one setting later, so that no setting always runs first.
    const entries = Object.entries(settings);
    for (const [name, command] of [...entries.slice(round % entries.length), ...entries.slice(0, round % entries.length)]) {
      await sh(`echo '${command}' > /etc/testbed/agent-cmd; kill $(${agentPids})`);
      await sleep(1500);
      const client = await connect(vm.target, { timeoutMs: 90000 });
      await client.info();
      await sleep(7000);
      const memory = await sh(`for p in $(${agentPids}); do grep -E 'VmRSS|RssAnon' /proc/$p/status | tr -s ' \\t\\n' ' '; echo threads $(ls /proc/$p/task | wc -l); done`);
      const once = async () => {
        const t0 = performance.now();
        const task = client.exec(['/bin/true']);
        task.stdout.resume();
        task.stderr.resume();
        await task.exit;
        return performance.now() - t0;
      };
      for (let i = 0; i < 10; i++) await once();
      const before = Number(await sh(cpuTicks));
      const porthole = [];
      for (let i = 0; i < runs; i++) porthole.push(await once());
      const cpuMs = ((Number(await sh(cpuTicks)) - before) * 10) / runs;
      const qgaTimes = [];
      for (let i = 0; i < runs; i++) {
        const t0 = performance.now();
        await qga.exec('/bin/true', [], 0);
        qgaTimes.push(performance.now() - t0);
      }
      const injectTicks = Number(await sh(cpuTicks));
      const t0 = performance.now();
      await client.installFile(payload, { path: '/tmp/agent-settings.bin' }).result;
      const seconds = (performance.now() - t0) / 1000;
      const injectCpu = ((Number(await sh(cpuTicks)) - injectTicks) / 100) * (1024 / mib);
      const t1 = performance.now();
      const back = client.readFile('/tmp/agent-settings.bin');
      back.data.resume();
      await back.result;
      const readSeconds = (performance.now() - t1) / 1000;
      await sh('rm -f /tmp/agent-settings.bin');
      const t2 = performance.now();
      const zeros = client.exec(['head', '-c', String(payload.length), '/dev/zero']);
      zeros.stdout.resume();
      zeros.stderr.resume();
      await zeros.exit;
      const stdoutSeconds = (performance.now() - t2) / 1000;
      console.log(`${name}: ${memory} | inject ${(mib / seconds).toFixed(1)} MiB/s, ${injectCpu.toFixed(0)} s of agent CPU per GiB, read-back ${(mib / readSeconds).toFixed(1)} MiB/s, exec stdout ${(mib / stdoutSeconds).toFixed(1)} MiB/s | exec p50 ${pct(porthole, 50).toFixed(1)} ms (qemu-ga ${pct(qgaTimes, 50).toFixed(1)}, ratio ${(pct(porthole, 50) / pct(qgaTimes, 50)).toFixed(2)}), p95 ${pct(porthole, 95).toFixed(1)} (${pct(qgaTimes, 95).toFixed(1)}) | agent CPU ${cpuMs.toFixed(1)} ms per command`);
      client.close();
    }
  }
  qga.close();
} finally {
  await vm.shutdown();
}
