// Profile the guest agent's main thread during a file injection and a read-back (docs/BENCHMARKS.md,
// "Where the agent's CPU went on file transfers"). Boots one test-bed VM whose agent (the JS bundle of
// `npm run build`) runs with a preload: SIGUSR2 starts V8's sampling profiler, the next SIGUSR2 writes
// /tmp/agent-N.cpuprofile. Each transfer is profiled, the profile fetched with readFile, and its self
// time printed by function; the .cpuprofile files are kept (Chrome DevTools opens them).
// Steps run in the order given and may repeat (inject,inject: the second on the hashing thread).
// `exec` profiles EXECS runs of /bin/true, one after another, and prints their p50 round trip; `stdout` one
// command writing MiB of zeros to its stdout (the bench's `head -c`).
//   node scripts/profile-agent.mjs [MiB=64] [OUTDIR=/tmp/porthole-profile] [WHAT=inject,readback,exec,stdout] [EXECS=200]
import { mkdirSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { guestShell } from './lib/guest-shell.mjs';

const require = createRequire(import.meta.url);
const { bootVm, agentBundlePath } = require('../packages/testbed/dist/index.js');
const { connect } = require('../packages/broker/dist/index.js');

const mib = Number(process.argv[2] ?? 64);
const outDir = process.argv[3] ?? '/tmp/porthole-profile';
const what = (process.argv[4] ?? 'inject,readback,exec,stdout').split(',');
const execs = Number(process.argv[5] ?? 200);
mkdirSync(outDir, { recursive: true });

const PRELOAD = `
const inspector = require('node:inspector');
const fs = require('node:fs');
const s = new inspector.Session();
s.connect();
let on = false, n = 0;
fs.writeFileSync('/tmp/agent.pid', String(process.pid));
process.on('SIGUSR2', () => {
  if (!on) s.post('Profiler.enable', () => s.post('Profiler.setSamplingInterval', { interval: 500 }, () => s.post('Profiler.start', () => { on = true; })));
  else s.post('Profiler.stop', (err, r) => { on = false; fs.writeFileSync('/tmp/agent-' + n++ + '.cpuprofile', JSON.stringify(r.profile)); });
});
`;

/** Self time (ms) by function, busiest first, and the idle time. */
function selfTimes(profile) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const cf = byId.get(id).callFrame;
    const key = `${cf.functionName || '(anonymous)'} ${cf.url.split('/').pop()}:${cf.lineNumber + 1}`;
    const us = profile.timeDeltas[i] ?? 0;
    self.set(key, (self.get(key) ?? 0) + us);
    total += us;
  });
  const idle = [...self].filter(([k]) => k.startsWith('(idle)')).reduce((a, [, v]) => a + v, 0);
  return { totalMs: total / 1000, idleMs: idle / 1000, rows: [...self].sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, v / 1000]) };
}

const vm = await bootVm({
  agent: { bundle: process.env.AGENT_BUNDLE ?? agentBundlePath() }, agentLog: '/var/log/porthole-agent.log', rawPorts: 0,
  files: [
    // The agent started as its unit starts it, through its launcher (installers/porthole-agent-env.sh).
    { path: '/etc/testbed/agent-cmd', content: '/usr/lib/porthole/porthole-agent-env /usr/bin/node -r /opt/profile-preload.js /opt/porthole/porthole-agent.cjs\n' },
    { path: '/opt/profile-preload.js', content: PRELOAD },
  ],
  log: (m) => console.error(m),
});
const client = await connect(vm.target, { timeoutMs: 90000 });
const shell = guestShell(client);
const readAll = async (path) => {
  const task = client.readFile(path);
  const parts = [];
  task.data.on('data', (d) => parts.push(d));
  await task.result;
  return Buffer.concat(parts);
};
/** utime + stime of the agent, in seconds (all its threads). */
const cpu = async (pid) => {
  const f = (await shell(`cat /proc/${pid}/stat`)).split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
};
try {
  const pid = (await shell('cat /tmp/agent.pid')).trim();
  const data = Buffer.alloc(mib * 1024 * 1024);
  for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  const transfers = {
    inject: () => client.installFile(data, { path: '/tmp/profile-big' }).result,
    readback: async () => { const t = client.readFile('/tmp/profile-big'); t.data.resume(); await t.result; },
    stdout: async () => {
      const task = client.exec(['head', '-c', String(data.length), '/dev/zero']);
      task.stdout.resume();
      task.stderr.resume();
      await task.exit;
    },
    exec: async () => {
      const ms = [];
      for (let i = 0; i < execs; i++) {
        const t0 = performance.now();
        const task = client.exec(['/bin/true']);
        task.stdout.resume();
        task.stderr.resume();
        await task.exit;
        ms.push(performance.now() - t0);
      }
      ms.sort((a, b) => a - b);
      console.log(`\nexec /bin/true × ${execs}: p50 ${ms[ms.length >> 1].toFixed(2)} ms, p95 ${ms[Math.floor(ms.length * 0.95)].toFixed(2)} ms (profiler on)`);
    },
  };
  for (const [step, name] of what.entries()) {
    const run = transfers[name];
    await shell(`kill -USR2 ${pid}`);
    await new Promise((r) => setTimeout(r, 300));
    const cpu0 = await cpu(pid);
    const t0 = performance.now();
    await run();
    const seconds = (performance.now() - t0) / 1000;
    const cpuSeconds = (await cpu(pid)) - cpu0;
    await shell(`kill -USR2 ${pid}`);
    await new Promise((r) => setTimeout(r, 1500));
    const latest = (await shell('ls -t /tmp/agent-*.cpuprofile | head -1')).trim();
    const raw = await readAll(latest);
    writeFileSync(join(outDir, `${step + 1}-${name}.cpuprofile`), raw);
    const { totalMs, idleMs, rows } = selfTimes(JSON.parse(raw.toString()));
    console.log(`\n${name}${name === 'exec' ? '' : `, ${mib} MiB`} (load: ${execFileSync('uptime').toString().trim().replace(/.*load/, 'load')})`);
    const rate = name === 'exec' ? `agent CPU ${(cpuSeconds * 1000 / execs).toFixed(2)} ms per exec` : `${(mib / seconds).toFixed(2)} MiB/s; agent CPU ${(cpuSeconds * 1024 / mib).toFixed(1)} s per GiB`;
    console.log(`${rate} (profiler on); main thread busy ${(totalMs - idleMs).toFixed(0)} ms, idle ${idleMs.toFixed(0)} ms`);
    for (const [key, ms] of rows.filter(([k]) => !k.startsWith('(idle)')).slice(0, 25)) {
      console.log(`${ms.toFixed(0).padStart(7)} ms ${((100 * ms) / (totalMs - idleMs)).toFixed(1).padStart(5)} %  ${key}`);
    }
  }
} finally {
  client.close();
  await vm.shutdown();
}
