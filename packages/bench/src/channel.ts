// Full protocol stack over a Unix socket pair vs a raw socket copy, with the
// far side in a worker thread (its own event loop, as an agent process has).
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import * as net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Session, Stream, CHUNK_SIZE, crc32cIsNative } from '@porthole/protocol';
import { Channel, SocketChannel, UnixSocketConnector } from '@porthole/transport';
import { BenchTable, MiB, mibPerSecond, percentile } from './table';

type Mode = 'raw' | 'porthole';

/** Far side: a raw sink that acknowledges the byte count, or a Porthole "agent" that discards chunks. */
function farSide(path: string, mode: Mode): void {
  const server = net.createServer((socket) => {
    server.close();
    if (mode === 'raw') {
      let n = 0;
      const expected = (workerData as { bytes: number }).bytes;
      socket.on('data', (c: Buffer) => {
        n += c.length;
        if (n >= expected) socket.write('done');
      });
      return;
    }
    serveAsAgent(new SocketChannel(socket, 'bench-far'));
  });
  server.listen(path, () => parentPort!.postMessage('listening'));
}

/** An "agent" session that discards what is written to it and answers info: the protocol cost without the disk. */
export function serveAsAgent(channel: Channel): Session {
  return new Session(channel, {
    role: 'agent',
    hello: { softwareVersion: 'bench' },
    onStream: (stream: Stream) => void (async () => {
      for await (const m of stream) void m;
      if (stream.open.request === 'info') await stream.send({ info: {} });
      stream.end();
    })().catch(() => undefined),
  });
}

if (!isMainThread && (workerData as { benchChannel?: boolean })?.benchChannel) {
  const d = workerData as { path: string; mode: Mode };
  farSide(d.path, d.mode);
}

async function startFar(mode: Mode, bytes: number): Promise<{ path: string; worker: Worker; dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'porthole-bench-'));
  const path = join(dir, 's.sock');
  const worker = new Worker(__filename, { workerData: { benchChannel: true, path, mode, bytes }, execArgv: process.execArgv });
  await new Promise<void>((resolve, reject) => {
    worker.once('message', () => resolve());
    worker.once('error', reject);
  });
  return { path, worker, dir };
}

async function rawCopy(bytes: number): Promise<number> {
  const far = await startFar('raw', bytes);
  const socket = net.connect(far.path);
  await new Promise((r) => socket.once('connect', r));
  const chunk = randomBytes(CHUNK_SIZE);
  const t0 = performance.now();
  const done = new Promise((r) => socket.once('data', r));
  for (let sent = 0; sent < bytes; sent += chunk.length) {
    if (!socket.write(chunk)) await new Promise((r) => socket.once('drain', r));
  }
  await done;
  const ms = performance.now() - t0;
  socket.destroy();
  await far.worker.terminate();
  rmSync(far.dir, { recursive: true, force: true });
  return ms;
}

async function smallRequest(session: Session): Promise<number> {
  const t = performance.now();
  const s = session.openStream({ info: {} });
  s.end();
  while ((await s.read()) !== null);
  return performance.now() - t;
}

export interface SessionFigures {
  /** Time of the bulk write. */
  ms: number;
  /** Small-request times with nothing else going on, then during the bulk write. */
  idle: number[];
  loaded: number[];
}

/** `idleRequests` small requests, then a `bytes` file-write stream with small requests alongside it. */
export async function measureSession(session: Session, bytes: number, idleRequests = 200): Promise<SessionFigures> {
  const idle: number[] = [];
  for (let i = 0; i < idleRequests; i++) idle.push(await smallRequest(session));
  const chunk = randomBytes(CHUNK_SIZE);
  const t0 = performance.now();
  let bulkDone = false;
  const bulk = (async () => {
    const s = session.openStream({ fileWrite: {} });
    for (let sent = 0; sent < bytes; sent += chunk.length) await s.send({ chunk: { offset: sent, data: chunk } });
    s.end();
    while ((await s.read()) !== null);
    bulkDone = true;
  })();
  const loaded: number[] = [];
  await new Promise((r) => setTimeout(r, 20));
  while (!bulkDone) {
    loaded.push(await smallRequest(session));
    await new Promise((r) => setTimeout(r, 5));
  }
  await bulk;
  return { ms: performance.now() - t0, idle, loaded };
}

async function portholeRun(bytes: number): Promise<SessionFigures> {
  const far = await startFar('porthole', bytes);
  const session = new Session(await new UnixSocketConnector(far.path).connect(), {
    role: 'broker', hello: { softwareVersion: 'bench' }, keepaliveIntervalMs: 0,
  });
  await session.ready();
  try {
    return await measureSession(session, bytes);
  } finally {
    session.close();
    await far.worker.terminate();
    rmSync(far.dir, { recursive: true, force: true });
  }
}

export async function benchChannel(opts: { bytes?: number } = {}): Promise<BenchTable> {
  const bytes = opts.bytes ?? 256 * MiB;
  const rawMs = await rawCopy(bytes);
  const run = await portholeRun(bytes);
  const raw = mibPerSecond(bytes, rawMs);
  const ph = mibPerSecond(bytes, run.ms);
  const p50i = percentile(run.idle, 50);
  const p50l = percentile(run.loaded, 50);
  return {
    title: `Protocol stack over a Unix socket pair (${bytes / MiB} MiB, chunk ${CHUNK_SIZE / 1024} KiB)`,
    columns: ['measure', 'value', 'reference', 'ratio', 'target'],
    rows: [
      ['throughput, MiB/s', ph, `raw socket copy ${raw.toFixed(0)}`, ph / raw, '≥ 0.8'],
      ['small request p50, ms (idle → under bulk)', p50l, `idle ${p50i.toFixed(3)}`, p50l / p50i, '≤ 2×'],
      ['small request p99, ms (idle → under bulk)', percentile(run.loaded, 99), `idle ${percentile(run.idle, 99).toFixed(3)}`, percentile(run.loaded, 99) / percentile(run.idle, 99), ''],
    ],
    notes: [
      `far side in a worker thread; ${run.loaded.length} small requests completed during the bulk transfer`,
      `CRC32C: ${crc32cIsNative ? 'native (SSE4.2 via @node-rs/crc32)' : 'pure JS'}`,
    ],
  };
}
