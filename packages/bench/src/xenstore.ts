// Xenstore channel: throughput and small-packet round trip through the test
// xenstored, which runs in a worker thread (its own event loop, as the daemon
// is its own process); host and guest channels share the main thread.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Channel } from '@porthole/transport';
import { XenstoreServer, connectXenstoreHost, connectXenstoreGuest, DEFAULT_WINDOW, DEFAULT_VALUE_SIZE } from '@porthole/xenstore';
import { BenchTable, MiB, mibPerSecond, percentile } from './table';

const DOMID = 5;

if (!isMainThread && (workerData as { benchXenstore?: boolean })?.benchXenstore) {
  const d = workerData as { dir: string };
  const server = new XenstoreServer();
  void (async () => {
    await server.listen(join(d.dir, 'socket'));
    await server.listenDomain(DOMID, join(d.dir, 'guest'));
    server.introduceDomain(DOMID);
    parentPort!.postMessage('listening');
  })();
}

async function throughput(from: Channel, to: Channel, bytes: number, packet: number): Promise<number> {
  let received = 0;
  const done = new Promise<void>((resolve, reject) => {
    const onData = (p: Buffer) => {
      received += p.length;
      if (received >= bytes) {
        to.off('data', onData);
        resolve();
      }
    };
    to.on('data', onData);
    to.once('close', (err) => reject(err ?? new Error('channel closed during the run')));
  });
  const payload = randomBytes(packet);
  const started = process.hrtime.bigint();
  for (let sent = 0; sent < bytes; sent += packet) {
    if (!from.write(payload)) await new Promise<void>((resolve) => from.once('drain', resolve));
  }
  await done;
  return Number(process.hrtime.bigint() - started) / 1e6;
}

async function roundTrips(host: Channel, guest: Channel, count: number): Promise<number[]> {
  const echo = (p: Buffer) => guest.write(p);
  guest.on('data', echo);
  const times: number[] = [];
  const ping = Buffer.alloc(64, 1);
  for (let i = 0; i < count; i++) {
    const t0 = process.hrtime.bigint();
    await new Promise<void>((resolve) => {
      host.once('data', () => resolve());
      host.write(ping);
    });
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  guest.off('data', echo);
  return times;
}

export async function benchXenstore(opts: { bytes?: number; roundTrips?: number } = {}): Promise<BenchTable> {
  const bytes = opts.bytes ?? 16 * MiB;
  const packet = 1 * MiB;
  const dir = mkdtempSync(join(tmpdir(), 'porthole-bench-xs-'));
  const worker = new Worker(__filename, { workerData: { benchXenstore: true, dir }, execArgv: process.execArgv });
  try {
    await new Promise<void>((resolve, reject) => {
      worker.once('message', () => resolve());
      worker.once('error', reject);
    });
    const host = await connectXenstoreHost(DOMID, { socketPath: join(dir, 'socket') }).connect();
    const guest = await connectXenstoreGuest({ path: join(dir, 'guest') }).connect();
    try {
      const up = mibPerSecond(bytes, await throughput(guest, host, bytes, packet));
      const down = mibPerSecond(bytes, await throughput(host, guest, bytes, packet));
      const rtt = await roundTrips(host, guest, opts.roundTrips ?? 300);
      return {
        title: `Xenstore channel through the test xenstored (${bytes / MiB} MiB in ${packet / MiB} MiB packets)`,
        columns: ['measure', 'value'],
        rows: [
          ['throughput guest → host, MiB/s', up],
          ['throughput host → guest, MiB/s', down],
          ['64-byte round trip p50, ms', percentile(rtt, 50)],
          ['64-byte round trip p99, ms', percentile(rtt, 99)],
        ],
        notes: [
          `window ${DEFAULT_WINDOW} keys per direction, values ≤ ${DEFAULT_VALUE_SIZE} characters (base64), xenstored in a worker thread over Unix sockets`,
          'a real xenstored talks to the guest through a shared ring and event channel; these figures bound the protocol and key handling, not that path',
        ],
      };
    } finally {
      host.close();
      guest.close();
    }
  } finally {
    await worker.terminate();
    rmSync(dir, { recursive: true, force: true });
  }
}
