// Xenstore channel: the full protocol session (as `porthole … xen:<domid>`
// uses it) and the bare packet channel under it, through the test xenstored.
// xenstored and the guest side each run in a worker thread (their own event
// loops, as they are their own processes); the host side is this thread.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Session, SLOW_PORT_STREAM_WINDOW } from '@porthole/protocol';
import { Channel } from '@porthole/transport';
import { XenstoreServer, connectXenstoreHost, connectXenstoreGuest, DEFAULT_WINDOW, DEFAULT_VALUE_SIZE } from '@porthole/xenstore';
import { BenchTable, MiB, mibPerSecond, percentile } from './table';
import { measureSession, serveAsAgent } from './channel';

const DOMID = 5;

type Role = 'xenstored' | 'agent' | 'sink';
interface Job {
  benchXenstore: Role;
  dir: string;
  bytes: number;
}

const socketOf = (dir: string) => join(dir, 'socket');
const guestOf = (dir: string) => join(dir, 'guest');

/** Worker side: the daemon, an "agent" session, or a packet sink that reports when all bytes arrived. */
async function worker(job: Job): Promise<void> {
  if (job.benchXenstore === 'xenstored') {
    const server = new XenstoreServer();
    await server.listen(socketOf(job.dir));
    await server.listenDomain(DOMID, guestOf(job.dir));
    server.introduceDomain(DOMID);
  } else {
    const channel = await connectXenstoreGuest({ path: guestOf(job.dir) }).connect();
    if (job.benchXenstore === 'agent') serveAsAgent(channel, SLOW_PORT_STREAM_WINDOW);
    else {
      let received = 0;
      channel.on('data', (p: Buffer) => {
        received += p.length;
        if (received >= job.bytes) parentPort!.postMessage('received');
      });
    }
  }
  parentPort!.postMessage('ready');
}

if (!isMainThread && (workerData as Partial<Job>)?.benchXenstore) void worker(workerData as Job);

function startWorker(job: Job): Promise<Worker> {
  const w = new Worker(__filename, { workerData: job, execArgv: process.execArgv });
  return new Promise((resolve, reject) => {
    w.once('message', () => resolve(w));
    w.once('error', reject);
  });
}

/** Packets host → guest at the channel level: what the protocol above has to work with. */
async function packetThroughput(host: Channel, sink: Worker, bytes: number, packet: number): Promise<number> {
  const done = new Promise<void>((resolve, reject) => {
    sink.once('message', () => resolve());
    sink.once('error', reject);
  });
  const payload = randomBytes(packet);
  const t0 = performance.now();
  for (let sent = 0; sent < bytes; sent += packet) {
    if (!host.write(payload)) await new Promise<void>((resolve) => host.once('drain', resolve));
  }
  await done;
  return performance.now() - t0;
}

export async function benchXenstore(opts: { bytes?: number; roundTrips?: number } = {}): Promise<BenchTable> {
  const bytes = opts.bytes ?? 16 * MiB;
  const requests = opts.roundTrips ?? 300;
  const packet = 256 * 1024;
  const dir = mkdtempSync(join(tmpdir(), 'porthole-bench-xs-'));
  const workers: Worker[] = [];
  try {
    workers.push(await startWorker({ benchXenstore: 'xenstored', dir, bytes }));
    const host = () => connectXenstoreHost(DOMID, { socketPath: socketOf(dir) }).connect();

    const agent = await startWorker({ benchXenstore: 'agent', dir, bytes });
    workers.push(agent);
    const session = new Session(await host(), { role: 'broker', hello: { softwareVersion: 'bench' }, keepaliveIntervalMs: 0 });
    await session.ready();
    const run = await measureSession(session, bytes, requests).finally(() => session.close());
    await agent.terminate();

    const sink = await startWorker({ benchXenstore: 'sink', dir, bytes });
    workers.push(sink);
    const raw = await host();
    const rawMs = await packetThroughput(raw, sink, bytes, packet).finally(() => raw.close());

    const channelRate = mibPerSecond(bytes, rawMs);
    const rate = mibPerSecond(bytes, run.ms);
    const p50i = percentile(run.idle, 50);
    const p50l = percentile(run.loaded, 50);
    return {
      title: `Protocol stack over the xenstore channel, test xenstored (${bytes / MiB} MiB)`,
      columns: ['measure', 'value', 'reference', 'ratio'],
      rows: [
        ['throughput host → guest, MiB/s', rate, `bare packet channel ${channelRate.toFixed(1)}`, rate / channelRate],
        ['small request p50, ms (idle → under bulk)', p50l, `idle ${p50i.toFixed(3)}`, p50l / p50i],
        ['small request p99, ms (idle → under bulk)', percentile(run.loaded, 99), `idle ${percentile(run.idle, 99).toFixed(3)}`, percentile(run.loaded, 99) / percentile(run.idle, 99)],
      ],
      notes: [
        `${requests} idle small requests (info round trips), ${run.loaded.length} during the bulk write; packets of ${packet / 1024} KiB for the bare channel`,
        `window ${DEFAULT_WINDOW} keys per direction, values ≤ ${DEFAULT_VALUE_SIZE} characters (base64); xenstored and the guest side in worker threads, over Unix sockets`,
        'a real xenstored reaches the guest through a shared ring and an event channel: these figures bound the protocol and key handling, not that path',
      ],
    };
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
    rmSync(dir, { recursive: true, force: true });
  }
}
