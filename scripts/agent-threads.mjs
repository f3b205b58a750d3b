// Where the guest's CPU goes during the agent's transfers, thread by thread (docs/BENCHMARKS.md, "Where an
// injection's CPU goes, thread by thread"). Boots one test-bed VM and runs STEPS in order through the agent:
//   inject / readback  a transfer of MiB (to /tmp/big and back)      exec    30 × /bin/true through a shell
//   stdout             head -c 100 MiB of /dev/zero, read on the host    idle    6 s without a request
//   rss                the agent's VmRSS split (RssAnon/RssShmem; SMAPS=1 adds its largest anonymous mappings)
// After each step: its rate, the CPU each of the agent's threads used (s; "main" is the event loop, the others by
// thread id: the hashing thread is the one that appears with the first large transfer), and the whole guest's
// user/system/idle time. The probes run through the agent too (a shell each, before and after a step).
//   AGENT_BUNDLE=... node scripts/agent-threads.mjs [MiB=64] [STEPS=inject,inject,readback,readback]
import { createRequire } from 'node:module';
import { guestShell } from './lib/guest-shell.mjs';

const require = createRequire(import.meta.url);
const { bootVm, agentBundlePath } = require('../packages/testbed/dist/index.js');
const { connect } = require('../packages/broker/dist/index.js');

const mib = Number(process.argv[2] ?? 64);
const steps = (process.argv[3] ?? 'inject,inject,readback,readback').split(',');
const vm = await bootVm({ agent: { bundle: process.env.AGENT_BUNDLE ?? agentBundlePath() }, rawPorts: 0, log: () => undefined });
const client = await connect(vm.target, { timeoutMs: 90000 });
const shell = guestShell(client);
/** utime + stime ticks per thread of the agent, and the guest's /proc/stat cpu line. */
const sample = async (pid) => {
  const out = await shell(`for t in /proc/${pid}/task/*; do echo \${t##*/} $(sed 's/.*) //' $t/stat | cut -d' ' -f12,13); done; head -1 /proc/stat`);
  const threads = new Map();
  let cpu = [];
  for (const line of out.trim().split('\n')) {
    const f = line.split(/\s+/);
    if (f[0] === 'cpu') cpu = f.slice(1, 8).map(Number);
    else threads.set(f[0] === pid ? 'main' : f[0], Number(f[1]) + Number(f[2]));
  }
  return { threads, cpu };
};
try {
  const pid = (await shell('pidof node')).trim().split(' ').pop();
  const data = Buffer.alloc(mib * 1024 * 1024);
  for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  const run = {
    inject: () => client.installFile(data, { path: '/tmp/big' }).result,
    readback: async () => { const t = client.readFile('/tmp/big'); t.data.resume(); await t.result; },
    exec: async () => { for (let i = 0; i < 30; i++) await shell('true'); },
    stdout: async () => { const t = client.exec(['head', '-c', String(100 << 20), '/dev/zero']); t.stdout.resume(); t.stderr.resume(); await t.exit; },
    idle: () => new Promise((r) => setTimeout(r, 6000)),
  };
  for (const step of steps) {
    if (step === 'rss') {
      console.log(`rss: ${(await shell(`grep -E 'VmRSS|RssAnon|RssShmem' /proc/${pid}/status | tr -s ' \\t' ' ' | tr '\\n' ' '`)).trim()}`);
      if (process.env.SMAPS) console.log(await shell(`awk '/^[0-9a-f]+-/{r=$1} /^Anonymous:/{if ($2>=512) print "  " $2 " kB " r}' /proc/${pid}/smaps | sort -rn | head -12`));
      continue;
    }
    if (!run[step]) throw new Error(`unknown step ${step}`);
    const before = await sample(pid);
    const t0 = performance.now();
    await run[step]();
    const seconds = (performance.now() - t0) / 1000;
    const after = await sample(pid);
    const threads = [...after.threads].map(([k, v]) => [k, v - (before.threads.get(k) ?? 0)]).filter(([, v]) => v > 1).map(([k, v]) => `${k} ${(v / 100).toFixed(2)}`).join(', ');
    const d = after.cpu.map((v, i) => v - before.cpu[i]);
    const rate = step === 'inject' || step === 'readback' ? `${(mib / seconds).toFixed(1)} MiB/s, ` : step === 'stdout' ? `${(100 / seconds).toFixed(1)} MiB/s, ` : '';
    console.log(`${step}: ${rate}${seconds.toFixed(2)} s | agent threads, CPU s: ${threads} | guest user ${(d[0] / 100).toFixed(2)}, system ${(d[2] / 100).toFixed(2)}, idle ${(d[3] / 100).toFixed(2)} s`);
  }
} finally {
  client.close();
  await vm.shutdown();
}
