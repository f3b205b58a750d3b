import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, readFileSync } from 'node:fs';
import { open, rename, rm, stat, writeFile, readFile } from 'node:fs/promises';
import * as http from 'node:http';
import * as https from 'node:https';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { Interval, IntervalSet } from './ranges';
import type { Extent } from './backends';
import type { TicketInfo, TicketRequest, TicketStatus } from './tickets';
import type { ImportRequest } from './importer';

/** An error answer of the image server (or a transport failure, status 0); the message is the server's cause. */
export class ImageClientError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
    this.name = 'ImageClientError';
  }
}

export interface EndpointOptions {
  /** PEM CA file contents to trust for https (a private CA) instead of the system store. */
  ca?: string | Buffer;
  /** Skip certificate verification (testing only). */
  insecure?: boolean;
  /** Sockets kept open to the server (parallel transfers). */
  connections?: number;
}

export interface RequestOptions {
  headers?: Record<string, string | number>;
  body?: Readable | Buffer | string;
}

/**
 * One image server: `unix:PATH`, `http://127.0.0.1:PORT` or `https://HOST:PORT` (a path prefix is kept, so a server
 * mounted under a prefix works). Keeps a pool of keep-alive sockets, one per parallel transfer.
 */
export class ImageEndpoint {
  private readonly agent: http.Agent;
  private readonly socketPath?: string;
  private readonly origin?: URL;

  constructor(readonly spec: string, opts: EndpointOptions = {}) {
    const maxSockets = opts.connections ?? 4;
    if (spec.startsWith('unix:')) {
      this.socketPath = spec.slice(5);
      this.agent = new http.Agent({ keepAlive: true, maxSockets });
      return;
    }
    let url: URL;
    try {
      url = new URL(spec);
    } catch {
      throw new Error(`bad image server address "${spec}" (expected unix:PATH, http://HOST:PORT or https://HOST:PORT)`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`bad image server address "${spec}": ${url.protocol} is not http or https`);
    this.origin = url;
    this.agent = url.protocol === 'https:'
      ? new https.Agent({ keepAlive: true, maxSockets, ...(opts.ca ? { ca: opts.ca } : {}), rejectUnauthorized: !opts.insecure })
      : new http.Agent({ keepAlive: true, maxSockets });
  }

  /** Sends one request; resolves with the response whatever its status. */
  request(method: string, path: string, opts: RequestOptions = {}): Promise<http.IncomingMessage> {
    const base = this.origin ? this.origin.pathname.replace(/\/$/, '') : '';
    const options: http.RequestOptions = { method, agent: this.agent, path: base + path, headers: opts.headers ?? {} };
    if (this.socketPath) Object.assign(options, { socketPath: this.socketPath, host: 'localhost' });
    else Object.assign(options, { hostname: this.origin!.hostname.replace(/^\[|\]$/g, ''), port: this.origin!.port || undefined });
    const mod = this.origin?.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request(options, resolve);
      req.on('error', (err) => reject(new ImageClientError(0, `${method} ${this.spec}: ${err.message}`)));
      const body = opts.body;
      if (body === undefined || typeof body === 'string' || Buffer.isBuffer(body)) req.end(body);
      else {
        // A body that fails to read (local file error) aborts the request with that cause.
        body.once('error', (err) => req.destroy(err));
        body.pipe(req);
      }
    });
  }

  /** A request whose answer is JSON; an error status throws with the server's message. */
  async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const res = await this.request(method, path, { body: payload, headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } });
    return readJson<T>(res, `${method} ${path.replace(/^\/images\/[^/?]+/, '/images/…')}`);
  }

  close(): void {
    this.agent.destroy();
  }

  // ---- control API (local server only) ----
  createTicket(req: TicketRequest): Promise<TicketStatus> {
    return this.json('POST', '/tickets', req);
  }
  ticketStatus(id: string): Promise<TicketStatus> {
    return this.json('GET', `/tickets/${encodeURIComponent(id)}`);
  }
  /** imageio's `PUT /tickets/<uuid>` (what vdsm sends). */
  async addTicket(ticket: Record<string, unknown> & { uuid: string }): Promise<TicketStatus> {
    await this.json('PUT', `/tickets/${encodeURIComponent(ticket.uuid)}`, ticket);
    return this.ticketStatus(ticket.uuid);
  }
  async extendTicket(id: string, timeout: number): Promise<TicketStatus> {
    await this.json('PATCH', `/tickets/${encodeURIComponent(id)}`, { timeout });
    return this.ticketStatus(id);
  }
  /** Deletes the ticket; resolves with its final status (from the list of ended tickets) when the server has it. */
  async revokeTicket(id: string): Promise<TicketStatus | undefined> {
    await this.json('DELETE', `/tickets/${encodeURIComponent(id)}`);
    return (await this.listTickets()).find((t) => t.id === id);
  }
  listTickets(): Promise<TicketStatus[]> {
    return this.json('GET', '/tickets');
  }
  importUrl(req: ImportRequest & Omit<TicketRequest, 'size' | 'ops'>): Promise<TicketStatus> {
    return this.json('POST', '/imports', req);
  }
}

async function readJson<T>(res: http.IncomingMessage, what: string): Promise<T> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  let body: unknown;
  try {
    body = text ? JSON.parse(text) : {};
  } catch {
    throw new ImageClientError(res.statusCode ?? 0, `${what}: the server answered ${res.statusCode} with a body that is not JSON`);
  }
  if ((res.statusCode ?? 0) >= 400) throw new ImageClientError(res.statusCode ?? 0, `${what}: ${res.statusCode} ${(body as { error?: string }).error ?? 'error'}`);
  return body as T;
}

export interface TransferOptions {
  /** Parallel connections (default 4). */
  connections?: number;
  /** Bytes per request (default 64 MiB). */
  chunkSize?: number;
  /** Attempts per chunk before the transfer fails (default 3). */
  attempts?: number;
  /** Called as bytes move: total done so far, image size. */
  onProgress?(done: number, total: number): void;
  /** Continue an earlier, cut transfer instead of starting over. */
  resume?: boolean;
}

const MiB = 1024 * 1024;

function chunks(gaps: Interval[], size: number): Interval[] {
  const out: Interval[] = [];
  for (const g of gaps) for (let s = g.start; s < g.end; s += size) out.push({ start: s, end: Math.min(g.end, s + size) });
  return out;
}

/** Runs `work` over `items` on `n` workers; the first failure stops handing out work and is thrown. */
async function parallel<T>(items: T[], n: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: unknown;
  const worker = async () => {
    while (failed === undefined && next < items.length) {
      const item = items[next++];
      try {
        await work(item);
      } catch (err) {
        failed ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(n, items.length)) }, worker));
  if (failed !== undefined) throw failed;
}

/** Retries transport failures and 5xx answers; a 4xx refusal is final. */
async function withRetries(attempts: number, fn: (attempt: number) => Promise<void>): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      const status = err instanceof ImageClientError ? err.status : 0;
      if ((status > 0 && status < 500) || attempt >= attempts) throw err;
      await sleep(200 * attempt);
    }
  }
}

/** Aggregate progress over parallel chunks; a chunk that fails takes its bytes back before it is retried. */
function progressMeter(start: number, total: number, report?: (done: number, total: number) => void) {
  let done = start;
  report?.(done, total);
  return {
    track(stream: NodeJS.EventEmitter): () => void {
      let moved = 0;
      stream.on('data', (b: Buffer | string) => {
        moved += b.length;
        done += b.length;
        report?.(done, total);
      });
      return () => {
        done -= moved;
        moved = 0;
      };
    },
  };
}

const dataPath = (ticket: string, sub = '') => `/images/${encodeURIComponent(ticket)}${sub}`;

/** What OPTIONS on a ticket tells a client (imageio's fields). */
export interface ServerOptions {
  features: string[];
  max_readers?: number;
  max_writers?: number;
  unix_socket?: string;
}

/** OPTIONS first, as imageio's clients do: the features and how many connections the ticket's backend takes. */
export function serverOptions(ep: ImageEndpoint, ticket: string): Promise<ServerOptions> {
  return ep.json<ServerOptions>('OPTIONS', dataPath(ticket));
}

export interface UploadResult {
  status: TicketInfo;
  /** Connections used: the ones asked for, at most the server's max_writers. */
  connections: number;
  /** Bytes sent by this run (less than the size after a resume). */
  sent: number;
}

/**
 * Uploads a local file through a write ticket: the missing ranges in parallel chunks (PUT with Content-Range), then
 * finalize (format check, publish) for a new image or flush for an image written in place. With `resume`, what the
 * server already holds is kept after sha256 spot checks confirm it is this file.
 */
export async function uploadImage(ep: ImageEndpoint, ticket: string, file: string, opts: TransferOptions = {}): Promise<UploadResult> {
  const { size } = await stat(file);
  const options = await serverOptions(ep, ticket);
  // A server that does not publish max_writers may corrupt data with several writers (imageio's rule).
  const connections = Math.max(1, Math.min(opts.connections ?? 4, options.max_writers ?? 1));
  const info = await ep.json<TicketInfo>('GET', dataPath(ticket, '/info'));
  if (info.size !== size) throw new Error(`${file} has ${size} bytes but the ticket's image has ${info.size}`);
  const held = new IntervalSet();
  if (opts.resume) {
    for (const [s, e] of info.upload.ranges) held.add(s, e);
    await confirmSameFile(ep, ticket, file, held.intervals());
  }
  const todo = chunks(held.missing(size), opts.chunkSize ?? 64 * MiB);
  const meter = progressMeter(held.covered(), size, opts.onProgress);
  let sent = 0;
  // Data goes out unflushed (flush=n); one flush at the end, as imageio's client does.
  const put = options.features.includes('flush') ? dataPath(ticket, '?flush=n') : dataPath(ticket);
  await parallel(todo, connections, (c) =>
    withRetries(opts.attempts ?? 3, async () => {
      const body = createReadStream(file, { start: c.start, end: c.end - 1, highWaterMark: MiB });
      const undo = meter.track(body);
      try {
        const res = await ep.request('PUT', put, {
          body,
          headers: { 'content-type': 'application/octet-stream', 'content-length': c.end - c.start, 'content-range': `bytes ${c.start}-${c.end - 1}/${size}` },
        });
        await readJson(res, `PUT bytes ${c.start}-${c.end - 1}`);
      } catch (err) {
        undo();
        body.destroy();
        throw err;
      }
      sent += c.end - c.start;
    }),
  );
  // Porthole's finalize checks and publishes; a server without it (imageio's flow) gets a flush and publishes when
  // the ticket is deleted.
  const status = options.features.includes('finalize')
    ? await ep.json<TicketInfo>('PATCH', dataPath(ticket), { op: 'finalize' })
    : (await ep.json('PATCH', dataPath(ticket), { op: 'flush' }), await ep.json<TicketInfo>('GET', dataPath(ticket, '/info')));
  return { status, connections, sent };
}

/** Compares sha256 of the last MiB of each range the server holds (at most 16 ranges) with the local file. */
async function confirmSameFile(ep: ImageEndpoint, ticket: string, file: string, held: Interval[]): Promise<void> {
  const fh = await open(file, 'r');
  try {
    for (const r of held.slice(-16)) {
      const start = Math.max(r.start, r.end - MiB);
      const buf = Buffer.alloc(r.end - start);
      await fh.read(buf, 0, buf.length, start);
      const local = createHash('sha256').update(buf).digest('hex');
      const remote = await ep.json<{ checksum: string }>('GET', dataPath(ticket, `/checksum?algorithm=sha256&offset=${start}&length=${buf.length}`));
      if (remote.checksum !== local) throw new Error(`cannot resume: bytes ${start}-${r.end - 1} on the server differ from ${file}; it is not the file uploaded before`);
    }
  } finally {
    await fh.close();
  }
}

interface DownloadState {
  size: number;
  done: Array<[number, number]>;
}

export interface DownloadResult {
  size: number;
  /** Connections used: the ones asked for, at most the server's max_readers. */
  connections: number;
  /** Bytes fetched by this run (zero extents are not fetched; a resume skips what is there). */
  fetched: number;
}

/**
 * Downloads the ticket's image to `file`: data extents only (zero extents stay holes, so a sparse image stays
 * sparse), in parallel ranged GETs into `FILE.part`, renamed to `file` when complete. Finished ranges are recorded
 * in `FILE.part.json`, so `resume` continues a cut download; the target path never holds a partial file.
 */
export async function downloadImage(ep: ImageEndpoint, ticket: string, file: string, opts: TransferOptions = {}): Promise<DownloadResult> {
  const options = await serverOptions(ep, ticket);
  const connections = Math.max(1, Math.min(opts.connections ?? 4, options.max_readers ?? 1));
  const info = await ep.json<TicketInfo>('GET', dataPath(ticket, '/info'));
  const size = info.size;
  const part = `${file}.part`;
  const stateFile = `${part}.json`;
  const done = new IntervalSet();
  let resumed = false;
  if (opts.resume) {
    const state = await readFile(stateFile, 'utf8').then((t) => JSON.parse(t) as DownloadState, () => undefined);
    const partSize = await stat(part).then((s) => s.size, () => -1);
    if (!state || state.size !== size || partSize !== size) throw new Error(`cannot resume: no partial download of a ${size}-byte image at ${part}`);
    for (const [s, e] of state.done) done.add(s, e);
    resumed = true;
  }
  if (!resumed) {
    const fh = await open(part, 'w', 0o600);
    await fh.truncate(size);
    await fh.close();
  }
  // Zero extents need no transfer: the part file reads as zeros there already.
  for (const e of await ep.json<Extent[]>('GET', dataPath(ticket, '/extents'))) if (e.zero) done.add(e.start, e.start + e.length);
  // Workers finish chunks concurrently; state writes are chained so the file is never written by two at once.
  let saving: Promise<void> = Promise.resolve();
  const saveState = () => (saving = saving.then(() => writeFile(stateFile, JSON.stringify({ size, done: done.intervals().map((i) => [i.start, i.end]) } satisfies DownloadState))));
  await saveState();
  const meter = progressMeter(done.covered(), size, opts.onProgress);
  let fetched = 0;
  await parallel(chunks(done.missing(size), opts.chunkSize ?? 64 * MiB), connections, (c) =>
    withRetries(opts.attempts ?? 3, async () => {
      const what = `GET bytes ${c.start}-${c.end - 1}`;
      const res = await ep.request('GET', dataPath(ticket), { headers: { range: `bytes=${c.start}-${c.end - 1}` } });
      if ((res.statusCode ?? 0) >= 400) await readJson(res, what);
      if (res.statusCode !== 206) {
        res.destroy();
        throw new ImageClientError(502, `${what}: the server answered ${res.statusCode}, not 206`);
      }
      const undo = meter.track(res);
      let moved = 0;
      res.on('data', (b: Buffer) => (moved += b.length));
      try {
        await pipeline(res, createWriteStream(part, { flags: 'r+', start: c.start, highWaterMark: MiB }));
        if (moved !== c.end - c.start) throw new ImageClientError(0, `${what}: the connection ended after ${moved} bytes`);
      } catch (err) {
        undo();
        throw err instanceof ImageClientError ? err : new ImageClientError(0, `${what}: ${(err as Error).message}`);
      }
      fetched += moved;
      done.add(c.start, c.end);
      await saveState();
    }),
  );
  await saving;
  const fh = await open(part, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(part, file);
  await rm(stateFile, { force: true });
  return { size, connections, fetched };
}

/** Reads a PEM file for `EndpointOptions.ca`, naming the file when it is unreadable. */
export function readCa(path: string | undefined): Buffer | undefined {
  if (!path) return undefined;
  try {
    return readFileSync(path);
  } catch (err) {
    throw new Error(`cannot read CA file ${path}: ${(err as Error).message}`);
  }
}
