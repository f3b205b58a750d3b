import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants as fsc, mkdirSync, readdirSync, unlinkSync } from 'node:fs';
import { lstat, open, link, unlink, rename } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { checkImage } from './checks';
import { ImageError } from './errors';
import { downloadInto, ImportRequest, redactUrl } from './importer';
import { Interval } from './ranges';
import { Closable, ImportProgress, Ticket, TicketOp, TicketRequest, TicketStatus } from './tickets';

const run = promisify(execFile);
const NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$/;
const MiB = 1024 * 1024;

export interface ImageServiceOptions {
  /** Directory holding the images; created if missing. */
  storageDir: string;
  /** Default ticket lifetime in seconds (300). */
  defaultTimeout?: number;
  /** Default inactivity timeout in seconds (60). */
  defaultInactivityTimeout?: number;
  /** Largest virtual size a checked image may have (default 4 TiB). */
  maxVirtualSize?: number;
  /** Seconds an ended ticket stays visible in status and gives a specific refusal (default 600). */
  keepEndedTickets?: number;
}

/** One extent of an image file: `zero` when it reads as zeros, `hole` when no storage is allocated. */
export interface Extent {
  start: number;
  length: number;
  zero: boolean;
  hole: boolean;
}

/**
 * Tickets and the operations the data API performs on images in one storage directory. Everything a client reaches
 * goes through a ticket id; host paths never leave this class.
 */
export class ImageService {
  readonly storageDir: string;
  private readonly tickets = new Map<string, Ticket>();
  private readonly imports = new Map<string, AbortController>();
  private readonly sweeper: NodeJS.Timeout;
  private readonly defaults: { timeout: number; inactivity: number; maxVirtualSize: number; keepEnded: number };

  constructor(opts: ImageServiceOptions) {
    this.storageDir = opts.storageDir;
    mkdirSync(this.storageDir, { recursive: true });
    // Tickets live in memory: staging files of an earlier run belong to tickets that are gone and can never be finished.
    for (const f of readdirSync(this.storageDir)) if (/^\..+\.upload$/.test(f)) unlinkSync(join(this.storageDir, f));
    this.defaults = {
      timeout: opts.defaultTimeout ?? 300,
      inactivity: opts.defaultInactivityTimeout ?? 60,
      maxVirtualSize: opts.maxVirtualSize ?? 4 * 2 ** 40,
      keepEnded: opts.keepEndedTickets ?? 600,
    };
    this.sweeper = setInterval(() => this.sweep(), 500);
    this.sweeper.unref();
  }

  // ---- tickets (control API and TypeScript API) ----

  async createTicket(req: TicketRequest): Promise<TicketStatus> {
    return (await this.newTicket(req)).status();
  }

  private async newTicket(req: TicketRequest, internalWriter = false): Promise<Ticket> {
    if (typeof req?.image !== 'string' || !NAME.test(req.image)) {
      throw new ImageError(400, 'image must be a plain name (letters, digits, ".", "_", "+", "-"; no leading dot, no slash)');
    }
    const ops = [...new Set(req.ops)];
    if (!Array.isArray(req.ops) || !ops.length || ops.some((o) => o !== 'read' && o !== 'write')) throw new ImageError(400, 'ops must list "read" and/or "write"');
    const seconds = (v: unknown, dflt: number, what: string) => {
      if (v === undefined) return dflt;
      if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 30 * 86400) throw new ImageError(400, `${what} must be 0..2592000 seconds`);
      return v;
    };
    const timeout = seconds(req.timeout, this.defaults.timeout, 'timeout');
    const inactivity = seconds(req.inactivityTimeout, this.defaults.inactivity, 'inactivityTimeout');
    if (req.format !== undefined && req.format !== 'raw' && req.format !== 'qcow2') throw new ImageError(400, 'format must be "raw" or "qcow2"');
    if (req.size !== undefined && (!Number.isSafeInteger(req.size) || req.size < 0)) throw new ImageError(400, 'size must be a non-negative integer');
    const maxVirtualSize = req.maxVirtualSize ?? this.defaults.maxVirtualSize;
    if (!Number.isSafeInteger(maxVirtualSize) || maxVirtualSize <= 0) throw new ImageError(400, 'maxVirtualSize must be a positive integer');
    const writes = ops.includes('write') || internalWriter;
    const finalPath = join(this.storageDir, req.image);
    if (writes) {
      const busy = [...this.tickets.values()].find((t) => t.image === req.image && t.state === 'active' && (t.ops.includes('write') || t.importRunning()));
      if (busy) throw new ImageError(409, `image ${req.image} already has an active write ticket`);
    }
    const existing = await lstat(finalPath).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (existing && !existing.isFile()) throw new ImageError(409, `image ${req.image} is not a regular file`);
    let t: Ticket;
    if (existing && !internalWriter) {
      if (req.size !== undefined && req.size !== existing.size) throw new ImageError(409, `image ${req.image} has ${existing.size} bytes, not ${req.size}`);
      t = new Ticket(req.image, existing.size, ops, finalPath, finalPath, 'existing', timeout * 1000, inactivity * 1000, req.format, maxVirtualSize);
    } else {
      if (existing) throw new ImageError(409, `image ${req.image} already exists`);
      if (!writes) throw new ImageError(404, `no image ${req.image}`);
      if (req.size === undefined) throw new ImageError(400, 'size is required for a new image');
      t = new Ticket(req.image, req.size, ops, '', finalPath, 'new', timeout * 1000, inactivity * 1000, req.format, maxVirtualSize);
      // Hidden staging name: a half-written or unchecked upload is never found under the image's name.
      t.path = join(this.storageDir, `.${req.image}.${t.id.slice(0, 12)}.upload`);
      const fh = await open(t.path, fsc.O_CREAT | fsc.O_EXCL | fsc.O_WRONLY | fsc.O_NOFOLLOW, 0o600);
      try {
        await fh.truncate(req.size);
      } finally {
        await fh.close();
      }
    }
    this.tickets.set(t.id, t);
    return t;
  }

  /** The ticket behind an id; unknown ids get the same answer whether they never existed or were forgotten. */
  get(id: string): Ticket {
    if (typeof id !== 'string' || id === '') throw new ImageError(403, 'no ticket given: data requests go to /images/<ticket id>');
    const t = this.tickets.get(id);
    if (!t) throw new ImageError(403, 'no such ticket');
    return t;
  }

  /** Looks up and authorizes in one step (the data API's entry point). */
  authorize(id: string, op: TicketOp): Ticket {
    const t = this.get(id);
    t.authorize(op);
    return t;
  }

  ticketStatus(id: string): TicketStatus {
    return this.get(id).status();
  }

  listTickets(): TicketStatus[] {
    return [...this.tickets.values()].map((t) => t.status());
  }

  /** Sets the ticket to expire `timeout` seconds from now. */
  extendTicket(id: string, timeout: number): TicketStatus {
    const t = this.get(id);
    if (typeof timeout !== 'number' || !Number.isFinite(timeout) || timeout <= 0 || timeout > 30 * 86400) throw new ImageError(400, 'timeout must be 1..2592000 seconds');
    if (t.state !== 'active' && t.state !== 'finalized') throw new ImageError(409, `ticket is ${t.state}; it cannot be extended`);
    if (t.overdue()) {
      this.end(t, 'expired');
      throw new ImageError(409, 'ticket is expired; it cannot be extended');
    }
    t.expiresAt = Date.now() + timeout * 1000;
    t.timeoutMs = timeout * 1000;
    return t.status();
  }

  /** Ends the ticket, closes its live connections, stops its import and discards an unfinished staged upload. */
  async revokeTicket(id: string): Promise<TicketStatus> {
    const t = this.get(id);
    await this.end(t, 'revoked');
    return t.status();
  }

  private async end(t: Ticket, state: 'revoked' | 'expired' | 'cancelled'): Promise<void> {
    if (t.state === 'revoked' || t.state === 'expired' || t.state === 'cancelled') return;
    const staged = t.mode === 'new' && t.state === 'active';
    t.state = state;
    t.endedAt = Date.now();
    t.closeConnections();
    this.imports.get(t.id)?.abort();
    if (t.importProgress?.state === 'running') Object.assign(t.importProgress, { state: 'failed', error: `ticket ${state}` });
    if (staged) await unlink(t.path).catch(() => undefined);
  }

  private sweep(): void {
    const now = Date.now();
    for (const t of this.tickets.values()) {
      if ((t.state === 'active' || t.state === 'finalized') && t.overdue(now)) void this.end(t, 'expired');
      else if (t.endedAt !== undefined && now - t.endedAt > this.defaults.keepEnded * 1000) this.tickets.delete(t.id);
    }
  }

  // ---- data operations ----

  /** Registers a live request on the ticket so revoke can cut it; returns the function that unregisters it. */
  track(t: Ticket, conn: Closable): () => void {
    t.connections.add(conn);
    return () => {
      t.connections.delete(conn);
      t.lastActivity = Date.now();
    };
  }

  /** A stream of [start, end) of the image, counted into the ticket's status. */
  async openRead(t: Ticket, span: Interval): Promise<Readable> {
    const fh = await open(t.path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    const stream = fh.createReadStream({ start: span.start, end: span.end - 1, highWaterMark: MiB });
    stream.on('data', (chunk: Buffer | string) => {
      t.bytesRead += chunk.length;
    });
    return stream;
  }

  /** Writes `body` at `start`; records what landed even when the body is cut short (that is where a resume starts). */
  async write(t: Ticket, start: number, body: Readable): Promise<number> {
    const fh = await open(t.path, fsc.O_WRONLY | fsc.O_NOFOLLOW);
    const ws = fh.createWriteStream({ start, highWaterMark: MiB });
    body.on('data', (chunk: Buffer) => {
      t.bytesWritten += chunk.length;
    });
    try {
      await new Promise<void>((resolve, reject) => {
        let cut: Error | undefined;
        // A cut request still lands what it delivered (it is where the resume starts): end the file
        // stream, which writes what it holds, instead of destroying it.
        const stop = (err: Error) => {
          if (cut) return;
          cut = err;
          body.unpipe(ws);
          ws.end();
        };
        body.once('error', stop);
        body.once('close', () => { if (!body.readableEnded) stop(new Error('the request was cut before its end')); });
        ws.once('error', (err) => { body.unpipe(ws); reject(err); });
        ws.once('finish', () => (cut ? reject(cut) : resolve()));
        body.pipe(ws);
      });
    } finally {
      ws.destroy();
      t.written.add(start, start + ws.bytesWritten);
    }
    return ws.bytesWritten;
  }

  /** Makes [start, end) read as zeros: punches a hole (keeping the size), or writes zeros where that is unsupported. */
  async zero(t: Ticket, span: Interval): Promise<void> {
    if (span.end === span.start) return;
    try {
      await run('fallocate', ['--punch-hole', '--keep-size', '--offset', String(span.start), '--length', String(span.end - span.start), t.path]);
    } catch {
      const fh = await open(t.path, fsc.O_WRONLY | fsc.O_NOFOLLOW);
      try {
        const zeros = Buffer.alloc(Math.min(MiB, span.end - span.start));
        for (let pos = span.start; pos < span.end; pos += zeros.length) {
          await fh.write(zeros, 0, Math.min(zeros.length, span.end - pos), pos);
        }
      } finally {
        await fh.close();
      }
    }
    t.written.add(span.start, span.end);
  }

  async flush(t: Ticket): Promise<void> {
    const fh = await open(t.path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  /** Data and zero extents of the image file, from `qemu-img map` (SEEK_DATA/SEEK_HOLE on a raw file). */
  async extents(t: Ticket): Promise<Extent[]> {
    const { stdout } = await run('qemu-img', ['map', '-f', 'raw', '--output=json', t.path], { maxBuffer: 64 * MiB });
    const raw = JSON.parse(stdout) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
    const out: Extent[] = [];
    for (const e of raw) {
      const x = { start: e.start, length: e.length, zero: e.zero, hole: !e.data };
      const last = out[out.length - 1];
      if (last && last.zero === x.zero && last.hole === x.hole && last.start + last.length === x.start) last.length += x.length;
      else out.push(x);
    }
    return out;
  }

  /** sha256 of a range (at most 256 MiB): lets a client confirm a resumed upload continues the same file. */
  async checksum(t: Ticket, span: Interval): Promise<string> {
    if (span.end - span.start > 256 * MiB) throw new ImageError(400, 'checksum ranges are limited to 256 MiB');
    const hash = createHash('sha256');
    const fh = await open(t.path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    try {
      await pipeline(fh.createReadStream({ start: span.start, end: span.end - 1, autoClose: false }), hash);
    } finally {
      await fh.close();
    }
    return hash.digest('hex');
  }

  /**
   * Closes writes and checks the format. A new image is linked under its name only when the check passes (never
   * replacing another file); otherwise the staging file is removed. An existing image that fails is renamed to a
   * hidden ".NAME.refused" so nothing opens it by its name.
   */
  async finalize(t: Ticket): Promise<TicketStatus> {
    if (t.finalizing) throw new ImageError(409, 'finalize is already running for this ticket');
    if (t.mode === 'new') {
      // A cut or partial upload must never be published; zero ranges count as written (clients skip holes that way).
      const gaps = t.written.missing(t.size);
      if (gaps.length) {
        const first = gaps[0];
        throw new ImageError(409, `upload incomplete: ${t.size - t.written.covered()} bytes not written yet (first gap ${first.start}-${first.end - 1}); resume at byte ${first.start}`);
      }
    }
    t.finalizing = true;
    try {
      await this.flush(t);
      const report = await checkImage(t.path, { maxVirtualSize: t.maxVirtualSize, expectFormat: t.format });
      t.check = report;
      if (!report.ok) {
        // Not closing connections here: this request is one of them and must carry the refusal back.
        t.state = 'refused';
        t.endedAt = Date.now();
        if (t.mode === 'new') await unlink(t.path).catch(() => undefined);
        else await rename(t.path, join(this.storageDir, `.${t.image}.refused`));
        throw new ImageError(422, `image refused: ${report.reason}`);
      }
      if (t.mode === 'new') {
        try {
          await link(t.path, t.finalPath);
        } catch (err) {
          throw new ImageError(409, `cannot publish image ${t.image}: ${(err as NodeJS.ErrnoException).code === 'EEXIST' ? 'the name was taken meanwhile' : (err as Error).message}`);
        }
        await unlink(t.path);
        t.path = t.finalPath;
      }
      t.state = 'finalized';
      return t.status();
    } finally {
      t.finalizing = false;
    }
  }

  /** Discards a staged upload (only a new image; an in-place ticket cannot undo its writes). */
  async cancel(t: Ticket): Promise<TicketStatus> {
    if (t.mode !== 'new') throw new ImageError(409, 'this ticket writes an existing image in place; there is no staged upload to cancel');
    await this.end(t, 'cancelled');
    return t.status();
  }

  // ---- import from URL ----

  /**
   * Starts downloading an https URL into a new image and returns the ticket once the server has answered (size known).
   * The download continues in the background, resuming with Range after a cut; progress is in the ticket status.
   * On success the image is checked and published like an upload.
   */
  async importUrl(req: ImportRequest & Omit<TicketRequest, 'size' | 'ops'> & { ops?: TicketOp[] }): Promise<TicketStatus> {
    const abort = new AbortController();
    let ticket: Ticket | undefined;
    const { finished } = await downloadInto(req, abort.signal, async (size) => {
      ticket = await this.newTicket({ ...req, size, ops: req.ops ?? ['read'] }, true);
      ticket.importProgress = { url: redactUrl(req.url), state: 'running', bytes: 0, total: size, attempts: 1 };
      this.imports.set(ticket.id, abort);
      return { path: ticket.path, progress: ticket.importProgress, written: ticket.written };
    });
    const t = ticket as Ticket;
    const progress = t.importProgress as ImportProgress;
    void finished.then(
      async () => {
        this.imports.delete(t.id);
        // "done" only once the image is checked and published under its name; reads are refused until then.
        try {
          await this.finalize(t);
          progress.state = 'done';
        } catch (err) {
          Object.assign(progress, { state: 'failed', error: (err as Error).message });
        }
      },
      async (err: Error) => {
        this.imports.delete(t.id);
        if (progress.state !== 'running') return;
        Object.assign(progress, { state: 'failed', error: err.message });
        t.state = 'refused';
        t.check = { ok: false, reason: `import failed: ${err.message}` };
        t.endedAt = Date.now();
        await unlink(t.path).catch(() => undefined);
      },
    );
    return t.status();
  }

  close(): void {
    clearInterval(this.sweeper);
    for (const a of this.imports.values()) a.abort();
    for (const t of this.tickets.values()) t.closeConnections();
  }
}

