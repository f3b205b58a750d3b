// The broker's qemu-guest-agent back end (what `porthole cp/exec qga:…` does) beside Porthole's agent
// in the same VM: the same copy both ways and /bin/true exec, through the same client calls.
import { randomBytes } from 'node:crypto';
import { Guest, QgaGuest } from '@porthole/broker';
import { BenchTable, MiB, mibPerSecond, percentile } from './table';

async function timed(work: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await work();
  return performance.now() - t0;
}

async function measure(guest: Guest, bytes: Buffer, path: string, runs: number) {
  const up = await timed(() => guest.installFile(bytes, { path }).result);
  const down = await timed(async () => {
    const task = guest.readFile(path);
    task.data.resume();
    await task.result;
  });
  const exec: number[] = [];
  for (let i = 0; i < runs + 2; i++) {
    const ms = await timed(async () => {
      const t = guest.exec(['/bin/true']);
      t.stdout.resume();
      t.stderr.resume();
      const x = await t.exit;
      if (x.code !== 0) throw new Error(`/bin/true exited ${x.code}`);
    });
    if (i >= 2) exec.push(ms); // warm-up
  }
  return { up: mibPerSecond(bytes.length, up), down: mibPerSecond(bytes.length, down), exec: percentile(exec, 50) };
}

/** One table: Porthole's agent against the qga back end; nothing else may hold the qga socket meanwhile. */
export async function benchQgaBackend(porthole: Guest, qgaSocket: string, fileBytes: number, runs: number): Promise<BenchTable> {
  const data = randomBytes(fileBytes);
  const ph = await measure(porthole, data, '/tmp/bench-backend-ph.bin', runs);
  const guest = await QgaGuest.connect(`qga:${qgaSocket}`, qgaSocket, 60000);
  let qga: Awaited<ReturnType<typeof measure>>;
  try {
    qga = await measure(guest, data, '/tmp/bench-backend-qga.bin', runs);
  } finally {
    guest.close();
  }
  return {
    title: `VM: the broker's qemu-guest-agent back end beside Porthole's agent (${fileBytes / MiB} MiB, one QEMU (TCG) guest)`,
    columns: ['measure', 'Porthole agent', 'qga back end', 'ratio Porthole / qga'],
    rows: [
      ['copy in (installFile), MiB/s', ph.up, qga.up, ph.up / qga.up],
      ['copy out (readFile), MiB/s', ph.down, qga.down, ph.down / qga.down],
      [`exec /bin/true p50, ms (${runs} runs)`, ph.exec, qga.exec, ph.exec / qga.exec],
    ],
    notes: [
      'both through the broker\'s client calls, sha256 checked: the qga back end writes base64 chunks of 1 MiB, then runs sha256sum (and stat) in the guest through guest-exec; it reads back the same way and checks with sha256sum',
      'qga exec: guest-exec, then guest-exec-status polled every 20 ms; the output arrives at the exit',
    ],
  };
}
