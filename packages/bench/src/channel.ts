// Full protocol stack over a Unix socket pair vs a raw socket copy, with the
// far side in a worker thread (its own event loop, as an agent process has).
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import * as net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Session, Stream, CHUNK_SIZE, crc32c, crc32cImplementation, DEFAULT_STREAM_WINDOW, SLOW_PORT_STREAM_WINDOW } from '@porthole/protocol';
import { Channel, SocketChannel, UnixSocketConnector } from '@porthole/transport';
import { BenchTable, MiB, mibPerSecond, percentile } from './table';

/**
 * `raw+crc`: a raw copy where both ends also run CRC32C over every byte, as any checksummed framing must.
 * `bare`: the least framing that can carry a small request beside bulk data (u32 length, u8 kind), with
 * CRC32C run over every byte at both ends as in `raw+crc`.
 */
type Mode = 'raw' | 'raw+crc' | 'bare' | 'porthole';

/** A bare record's header: u32 payload length, u8 kind (0 bulk, 1 ping). */
const BARE_HEADER = 5;

/**
 * Far side: a raw sink that acknowledges the byte count, or a Porthole "agent"
 * that discards chunks. It dials the near side, as a broker dials QEMU's socket:
 * the receiving end of the bulk transfer is then the one that dialed.
 */
async function farSide(path: string, mode: Mode, window?: number): Promise<void> {
  if (mode === 'bare') {
    bareFar(net.connect(path));
    return;
  }
  if (mode !== 'porthole') {
    const socket = net.connect(path);
    let n = 0;
    const each = (workerData as { bytes: number }).bytes;
    let next = each;
    socket.on('data', (c: Buffer) => {
      if (mode === 'raw+crc') crc32c(c);
      n += c.length;
      // One byte back per transfer of `each` bytes (the first is the warm-up).
      if (n >= next) {
        socket.write('d');
        next += each;
      }
    });
    return;
  }
  serveAsAgent(await new UnixSocketConnector(path).connect(), window);
}

/** Reads bare records, checksums and discards bulk ones and answers each ping with one byte. */
function bareFar(socket: net.Socket): void {
  let header = Buffer.alloc(0);
  let skip = 0;
  socket.on('data', (c: Buffer) => {
    crc32c(c);
    for (let at = 0; at < c.length;) {
      if (skip > 0) {
        const n = Math.min(skip, c.length - at);
        skip -= n;
        at += n;
        continue;
      }
      const piece = c.subarray(at, at + BARE_HEADER - header.length);
      header = Buffer.concat([header, piece]);
      at += piece.length;
      if (header.length < BARE_HEADER) return;
      skip = header.readUInt32BE(0);
      if (header[4] === 1) socket.write('p');
      header = Buffer.alloc(0);
    }
  });
}

/**
 * An "agent" session that discards what is written to it and answers info: the protocol cost without
 * the disk. `window`: the credit it grants per stream (the session default unless given).
 */
export function serveAsAgent(channel: Channel, window?: number): Session {
  return new Session(channel, {
    role: 'agent',
    hello: { softwareVersion: 'bench' },
    streamWindow: window,
    onStream: (stream: Stream) => void (async () => {
      for await (const m of stream.lent()) void m;
      if (stream.open.request === 'info') await stream.send({ info: {} });
      stream.end();
    })().catch(() => undefined),
  });
}

if (!isMainThread && (workerData as { benchChannel?: boolean })?.benchChannel) {
  const d = workerData as { path: string; mode: Mode; window?: number };
  void farSide(d.path, d.mode, d.window);
}

/** Listens on a fresh socket, starts the far side and hands over the connection it made. */
async function startFar(mode: Mode, bytes: number, window?: number): Promise<{ socket: net.Socket; worker: Worker; dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'porthole-bench-'));
  const path = join(dir, 's.sock');
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(path, resolve));
  const worker = new Worker(__filename, { workerData: { benchChannel: true, path, mode, bytes, window }, execArgv: process.execArgv });
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    server.once('connection', resolve);
    worker.once('error', reject);
  });
  server.close();
  return { socket, worker, dir };
}

async function rawCopy(bytes: number, mode: 'raw' | 'raw+crc'): Promise<number> {
  const far = await startFar(mode, bytes);
  const socket = far.socket;
  const chunk = randomBytes(CHUNK_SIZE);
  const transfer = async () => {
    const done = new Promise((r) => socket.once('data', r));
    for (let sent = 0; sent < bytes; sent += chunk.length) {
      if (mode === 'raw+crc') crc32c(chunk);
      if (!socket.write(chunk)) await new Promise((r) => socket.once('drain', r));
    }
    await done;
  };
  await transfer(); // warm-up, as for the other modes
  const t0 = performance.now();
  await transfer();
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

export interface UnderBulkOptions {
  /** Run once first (a long-running agent's code is compiled and optimised; a fresh far side's is not). */
  warm?: () => Promise<void>;
  /** Wait after the bulk transfer started, and between small requests during it (ms). */
  startMs?: number;
  gapMs?: number;
}

/** `idleRequests` small requests, then the bulk transfer with small requests alongside it. */
export async function measureUnderBulk(small: () => Promise<number>, bulk: () => Promise<void>, idleRequests: number, options: UnderBulkOptions = {}): Promise<SessionFigures> {
  await options.warm?.();
  const idle: number[] = [];
  for (let i = 0; i < idleRequests; i++) idle.push(await small());
  const t0 = performance.now();
  let bulkDone = false;
  let ms = 0;
  // The transfer's own time: the small request still out and the gap after it are not part of it.
  const transfer = bulk().then(() => { ms = performance.now() - t0; bulkDone = true; });
  const loaded: number[] = [];
  await new Promise((r) => setTimeout(r, options.startMs ?? 20));
  while (!bulkDone) {
    loaded.push(await small());
    await new Promise((r) => setTimeout(r, options.gapMs ?? 5));
  }
  await transfer;
  return { ms, idle, loaded };
}

/** A file-write stream of `bytes` in chunks, to its end. */
async function bulkWrite(session: Session, bytes: number): Promise<void> {
  const chunk = randomBytes(CHUNK_SIZE);
  const s = session.openStream({ fileWrite: {} });
  for (let sent = 0; sent < bytes; sent += chunk.length) await s.send({ chunk: { offset: sent, data: chunk } });
  s.end();
  while ((await s.read()) !== null);
}

/** `warmBytes` written first, `idleRequests` small requests, then a `bytes` file-write stream with small requests alongside it. */
export function measureSession(session: Session, bytes: number, idleRequests = 200, warmBytes = 0): Promise<SessionFigures> {
  return measureUnderBulk(() => smallRequest(session), () => bulkWrite(session, bytes), idleRequests,
    { warm: warmBytes ? () => bulkWrite(session, warmBytes) : undefined });
}

/**
 * The same measure over bare records: a ping's wait behind the bulk bytes already
 * queued in Node and the kernel, which any protocol on one byte stream pays.
 */
async function bareRun(bytes: number): Promise<SessionFigures> {
  const far = await startFar('bare', bytes);
  const socket = far.socket;
  let answered: (() => void) | undefined;
  socket.on('data', () => answered?.());
  const record = (kind: number, payload: Buffer) => {
    const h = Buffer.alloc(BARE_HEADER);
    h.writeUInt32BE(payload.length, 0);
    h[4] = kind;
    return payload.length ? Buffer.concat([h, payload]) : h;
  };
  const ping = record(1, Buffer.alloc(0));
  const chunk = record(0, randomBytes(CHUNK_SIZE));
  try {
    const bulk = (total: number) => async () => {
      // Paced as the session paces a bulk writer: a turn of the event loop after each chunk.
      for (let sent = 0; sent < total; sent += CHUNK_SIZE) {
        crc32c(chunk);
        if (!socket.write(chunk)) await new Promise((r) => socket.once('drain', r));
        await new Promise((r) => setImmediate(r));
      }
    };
    return await measureUnderBulk(async () => {
      const t = performance.now();
      const got = new Promise<void>((r) => (answered = r));
      socket.write(ping);
      await got;
      return performance.now() - t;
    }, bulk(bytes), 200, { warm: bulk(bytes) });
  } finally {
    socket.destroy();
    await far.worker.terminate();
    rmSync(far.dir, { recursive: true, force: true });
  }
}

async function portholeRun(bytes: number, window?: number): Promise<SessionFigures> {
  const far = await startFar('porthole', bytes, window);
  const session = new Session(new SocketChannel(far.socket, 'bench-near'), {
    role: 'broker', hello: { softwareVersion: 'bench' }, keepaliveIntervalMs: 0,
  });
  await session.ready();
  try {
    return await measureSession(session, bytes, 200, bytes);
  } finally {
    session.close();
    await far.worker.terminate();
    rmSync(far.dir, { recursive: true, force: true });
  }
}

/**
 * Rounds of raw copy, raw copy with CRC32C and the full stack, interleaved so
 * that a noisy neighbour hits all three alike; throughput is each one's best
 * round, latencies are pooled over the rounds.
 */
export async function benchChannel(opts: { bytes?: number; rounds?: number } = {}): Promise<BenchTable> {
  const bytes = opts.bytes ?? 256 * MiB;
  const rounds = opts.rounds ?? 3;
  const best = { raw: Infinity, crc: Infinity };
  const porthole = new SessionRuns();
  const slowPortWindow = new SessionRuns();
  const bare = new SessionRuns();
  for (let i = 0; i < rounds; i++) {
    best.raw = Math.min(best.raw, await rawCopy(bytes, 'raw'));
    best.crc = Math.min(best.crc, await rawCopy(bytes, 'raw+crc'));
    porthole.add(await portholeRun(bytes));
    slowPortWindow.add(await portholeRun(bytes, SLOW_PORT_STREAM_WINDOW));
    bare.add(await bareRun(bytes));
  }
  const raw = mibPerSecond(bytes, best.raw);
  const withCrc = mibPerSecond(bytes, best.crc);
  const ph = mibPerSecond(bytes, porthole.bestMs);
  const slow = mibPerSecond(bytes, slowPortWindow.bestMs);
  const p50i = percentile(porthole.idle, 50);
  // What waiting behind the queued bulk bytes adds to a small request, whatever the protocol.
  const bareWait = percentile(bare.loaded, 50) - percentile(bare.idle, 50);
  const window = `${SLOW_PORT_STREAM_WINDOW / 1024} KiB`;
  return {
    title: `Protocol stack over a Unix socket pair (${bytes / MiB} MiB, chunk ${CHUNK_SIZE / 1024} KiB)`,
    columns: ['measure', 'value', 'reference', 'ratio', 'target'],
    rows: [
      ['throughput, MiB/s', ph, `raw socket copy ${raw.toFixed(0)}`, ph / raw, '≥ 0.8'],
      ['throughput vs a checksummed raw copy', ph, `raw copy + CRC32C both ends ${withCrc.toFixed(0)}`, ph / withCrc, ''],
      porthole.row('small request p50, ms (idle → under bulk)', 50, '≤ 2×'),
      porthole.row('small request p99, ms (idle → under bulk)', 99),
      [`throughput with the agent's ${window} window, MiB/s`, slow, `raw socket copy ${raw.toFixed(0)}`, slow / raw, ''],
      slowPortWindow.row(`small request p50 with the ${window} window, ms`, 50),
      bare.row('bare ping p50, ms (idle → under bulk)', 50),
      ['floor for the small request: its idle time + the bare wait, ms', p50i + bareWait, `idle ${p50i.toFixed(3)}`, (p50i + bareWait) / p50i, ''],
    ],
    notes: [
      `far side in a worker thread; best of ${rounds} interleaved rounds each; ${porthole.loaded.length} small requests completed during the bulk transfers; each connection (raw ones too) first carries one unmeasured transfer of the same size, so both ends run optimised code as a long-running agent and broker do`,
      `window: the credit the far side grants per stream, the session default (${DEFAULT_STREAM_WINDOW / MiB} MiB) unless named; the agent grants ${window}, which in the TCG guest keeps a request beside a transfer near its idle time at no cost in throughput (VM table below), and here trades throughput for latency`,
      'bare: records of u32 length + u8 kind and nothing else but CRC32C over every byte at both ends, the bulk written as the session writes it (a turn of the event loop per 128 KiB); its ping waits behind the bytes already queued in Node and the kernel, checked by the receiver, as any request on one checked byte stream must',
      `CRC32C: ${crc32cImplementation()}, ${crcSpeed().toFixed(0)} MiB/s on one core here`,
    ],
  };
}

/** Figures pooled over rounds of one kind of run: the best bulk time, every small request's time. */
class SessionRuns {
  bestMs = Infinity;
  readonly idle: number[] = [];
  readonly loaded: number[] = [];

  add(run: SessionFigures): void {
    this.bestMs = Math.min(this.bestMs, run.ms);
    this.idle.push(...run.idle);
    this.loaded.push(...run.loaded);
  }

  /** A table row: the percentile under bulk against the same percentile idle. */
  row(measure: string, p: number, target = ''): Array<string | number> {
    const loaded = percentile(this.loaded, p);
    const idle = percentile(this.idle, p);
    return [measure, loaded, `idle ${idle.toFixed(3)}`, loaded / idle, target];
  }
}

/** Single-core CRC32C speed over chunk-sized buffers: what every frame costs each end. */
function crcSpeed(): number {
  const chunk = randomBytes(CHUNK_SIZE);
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < 200) {
    crc32c(chunk);
    n++;
  }
  return mibPerSecond(n * CHUNK_SIZE, performance.now() - t0);
}
