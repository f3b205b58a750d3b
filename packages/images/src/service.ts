import { constants as fsc, mkdirSync, readdirSync, realpathSync, unlinkSync } from 'node:fs';
import { link, lstat, open, rename, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Backend, DirtyExtent, Extent, FileBackend, NbdBackend, WriteCut } from './backends';
import { BlockHash, blocks, hasher, hashReady } from './blkhash';
import { checkHeader, checkImage, FormatReport } from './checks';
import { ImageError } from './errors';
import { downloadInto, ImportRequest, redactUrl } from './importer';
import { parseNbdUrl } from './nbd';
import { Interval } from './ranges';
import { ImageioTicket, ImportProgress, Operation, Ticket, TicketInfo, TicketOp, TicketRequest, TicketStatus } from './tickets';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$/;
const MiB = 1024 * 1024;
const TiB = 2 ** 40;

export type { Extent, DirtyExtent };

export interface ImageServiceOptions {
  /** Directory holding the images; created if missing. */
  storageDir: string;
  /** Ticket timeout in seconds when a request names none (300). */
  defaultTimeout?: number;
  /** Seconds an idle connection of a ticket is kept open when the ticket names none (60, imageio's default). */
  defaultInactivityTimeout?: number;
  /** Largest virtual size an image may have (default 4 TiB); tickets for more are refused when they are made. */
  maxVirtualSize?: number;
  /** Seconds a deleted or cancelled ticket stays listed and gives a specific refusal (default 600). */
  keepEndedTickets?: number;
  /** Parallel connections a client may use per ticket (imageio's max_readers/max_writers; default 8). */
  maxConnections?: number;
  /** Seconds a DELETE waits for the ticket's requests to end before answering 409 (default 60, as imageio). */
  removeTimeout?: number;
}

/** Bytes of qcow2 metadata (L1/L2/refcount tables, header) allowed on top of the virtual size of an upload. */
function maxFileSize(virtualSize: number): number {
  return virtualSize + Math.ceil(virtualSize / 512) + 64 * MiB;
}

interface Tombstone {
  at: number;
  status: TicketStatus;
}

const int = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);

/**
 * Tickets and the operations the data API performs through them, over one storage directory and NBD exports.
 * Every path that leaves an image in the store passes the format check before the image can be used: a staged
 * upload is published only after it; an image written in place is quick-checked on every flush and on expiry, fully
 * checked when its ticket is finalized or deleted, and marked on disk (`.NAME.unchecked`) until then, so a restart
 * checks it too. Host paths never leave this class.
 */
export class ImageService {
  readonly storageDir: string;
  private readonly realStorage: string;
  private readonly tickets = new Map<string, Ticket>();
  private readonly tombstones = new Map<string, Tombstone>();
  private readonly imports = new Map<string, AbortController>();
  private readonly sweeper: NodeJS.Timeout;
  readonly maxConnections: number;
  private readonly defaults: { timeout: number; inactivity: number; maxVirtualSize: number; keepEnded: number; removeTimeout: number };

  constructor(opts: ImageServiceOptions) {
    this.storageDir = opts.storageDir;
    mkdirSync(this.storageDir, { recursive: true });
    this.realStorage = realpathSync(this.storageDir);
    // Tickets live in memory: staging files of an earlier run belong to tickets that are gone and can never be finished.
    for (const f of readdirSync(this.storageDir)) if (/^\..+\.upload$/.test(f)) unlinkSync(join(this.storageDir, f));
    this.defaults = {
      timeout: opts.defaultTimeout ?? 300,
      inactivity: opts.defaultInactivityTimeout ?? 60,
      maxVirtualSize: opts.maxVirtualSize ?? 4 * TiB,
      keepEnded: opts.keepEndedTickets ?? 600,
      removeTimeout: opts.removeTimeout ?? 60,
    };
    this.maxConnections = opts.maxConnections ?? 8;
    this.sweeper = setInterval(() => void this.sweep(), 500);
    this.sweeper.unref();
  }

  get defaultInactivityTimeout(): number {
    return this.defaults.inactivity;
  }

  /** Checks images whose in-place writes were never checked (the server stopped meanwhile). */
  async recover(): Promise<Array<{ image: string; check: FormatReport }>> {
    const out: Array<{ image: string; check: FormatReport }> = [];
    for (const f of readdirSync(this.storageDir)) {
      const m = /^\.(.+)\.unchecked$/.exec(f);
      if (!m || !NAME.test(m[1])) continue;
      const path = join(this.storageDir, m[1]);
      const st = await lstat(path).catch(() => undefined);
      if (st?.isFile()) {
        const check = await checkImage(path, { maxVirtualSize: this.defaults.maxVirtualSize });
        if (!check.ok) await rename(path, join(this.storageDir, `.${m[1]}.refused`));
        out.push({ image: m[1], check });
      }
      await unlink(join(this.storageDir, f)).catch(() => undefined);
    }
    return out;
  }

  // ---- tickets ----

  private seconds(v: unknown, dflt: number, what: string): number {
    if (v === undefined) return dflt;
    if (!int(v) || v < 0 || v > 30 * 86400) throw new ImageError(400, `${what} must be an integer 0..2592000 (seconds)`);
    return v;
  }

  private checkOps(ops: unknown): TicketOp[] {
    if (!Array.isArray(ops) || !ops.length || ops.some((o) => o !== 'read' && o !== 'write')) throw new ImageError(400, 'ops must list "read" and/or "write"');
    return [...new Set(ops as TicketOp[])];
  }

  /** Limits checked when the ticket is made, so a transfer never starts that could not finish. */
  private checkSize(size: number, maxVirtualSize: number): void {
    if (size > maxFileSize(maxVirtualSize)) throw new ImageError(400, `size ${size} exceeds this server's limit for an image (virtual size at most ${maxVirtualSize} bytes)`);
  }

  /** A ticket by image name (Porthole's flow). */
  async createTicket(req: TicketRequest): Promise<TicketStatus> {
    return (await this.newTicket(req)).status();
  }

  private async newTicket(req: TicketRequest, internalWriter = false, id?: string): Promise<Ticket> {
    if (typeof req?.image !== 'string' || !NAME.test(req.image)) {
      throw new ImageError(400, 'image must be a plain name (letters, digits, ".", "_", "+", "-"; no leading dot, no slash)');
    }
    const ops = this.checkOps(req.ops);
    const timeout = this.seconds(req.timeout, this.defaults.timeout, 'timeout');
    const inactivity = this.seconds(req.inactivityTimeout, this.defaults.inactivity, 'inactivityTimeout');
    if (req.format !== undefined && req.format !== 'raw' && req.format !== 'qcow2') throw new ImageError(400, 'format must be "raw" or "qcow2"');
    if (req.size !== undefined && (!int(req.size) || req.size < 0)) throw new ImageError(400, 'size must be a non-negative integer');
    const maxVirtualSize = req.maxVirtualSize ?? this.defaults.maxVirtualSize;
    if (!int(maxVirtualSize) || maxVirtualSize <= 0 || maxVirtualSize > this.defaults.maxVirtualSize) {
      throw new ImageError(400, `maxVirtualSize must be a positive integer up to the server's ${this.defaults.maxVirtualSize}`);
    }
    return this.openFileTicket({
      id, image: req.image, ops, timeout, inactivity, size: req.size, format: req.format, maxVirtualSize,
      sparse: req.sparse ?? true, dirty: false, filename: req.filename, transferId: req.transferId, flavour: 'porthole', exactSize: true,
    }, internalWriter);
  }

  private async openFileTicket(
    o: { id?: string; image: string; ops: TicketOp[]; timeout: number; inactivity: number; size?: number; format?: 'raw' | 'qcow2'; maxVirtualSize: number; sparse: boolean; dirty: boolean; filename?: string; transferId?: string; flavour: 'porthole' | 'imageio'; exactSize: boolean },
    internalWriter = false,
  ): Promise<Ticket> {
    const writes = o.ops.includes('write') || internalWriter;
    const finalPath = join(this.storageDir, o.image);
    const others = [...this.tickets.values()].filter((t) => t.image === o.image && t.state === 'active' && !t.canceled);
    if (writes && others.some((t) => t.ops.includes('write') || t.importProgress?.state === 'running')) throw new ImageError(409, `image ${o.image} already has an active write ticket`);
    if (this.unchecked(o.image)) throw new ImageError(409, `image ${o.image} was written in place and has not passed the format check yet; delete the writer's ticket first`);
    if (o.size !== undefined && writes) this.checkSize(o.size, o.maxVirtualSize);
    const existing = await lstat(finalPath).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (existing && !existing.isFile()) throw new ImageError(409, `image ${o.image} is not a regular file`);
    const common = { id: o.id, url: `file://${finalPath}`, image: o.image, ops: o.ops, timeout: o.timeout, inactivityTimeout: o.inactivity, sparse: o.sparse, dirty: o.dirty, transferId: o.transferId, filename: o.filename, format: o.format, maxVirtualSize: o.maxVirtualSize, flavour: o.flavour, finalPath };
    if (existing && !internalWriter) {
      if (o.exactSize && o.size !== undefined && o.size !== existing.size) throw new ImageError(409, `image ${o.image} has ${existing.size} bytes, not ${o.size}`);
      const size = o.size ?? existing.size;
      if (writes) this.checkSize(size, o.maxVirtualSize);
      return this.add(new Ticket({ ...common, mode: 'existing', size, backend: new FileBackend(finalPath, this.maxConnections), path: finalPath }));
    }
    if (existing) throw new ImageError(409, `image ${o.image} already exists`);
    if (!writes) throw new ImageError(404, `no image ${o.image}`);
    if (o.size === undefined) throw new ImageError(400, 'size is required for a new image');
    const backend = new FileBackend('', this.maxConnections);
    const t = new Ticket({ ...common, mode: 'new', size: o.size, backend });
    // Hidden staging name: a half-written or unchecked upload is never found under the image's name.
    t.path = backend.path = join(this.storageDir, `.${o.image}.${t.id.replace(/[^A-Za-z0-9]/g, '').slice(0, 12)}.upload`);
    const fh = await open(t.path, fsc.O_CREAT | fsc.O_EXCL | fsc.O_WRONLY | fsc.O_NOFOLLOW, 0o600);
    try {
      await fh.truncate(o.size);
    } catch (err) {
      await fh.close();
      await unlink(t.path).catch(() => undefined);
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EFBIG' || code === 'EINVAL') throw new ImageError(400, `size ${o.size} is larger than the storage file system can hold`);
      throw new ImageError(507, `cannot create the upload: ${code ?? 'error'}`);
    }
    await fh.close();
    return this.add(t);
  }

  private add(t: Ticket): Ticket {
    this.tombstones.delete(t.id);
    this.tickets.set(t.id, t);
    return t;
  }

  /** `PUT /tickets/<uuid>`: a ticket in imageio's schema. The same uuid with the same target renews it. */
  async addImageioTicket(uuid: string, body: unknown): Promise<void> {
    if (!uuid) throw new ImageError(400, 'Ticket id is required');
    if (!body || typeof body !== 'object' || Array.isArray(body)) throw new ImageError(400, 'Invalid ticket: expecting a JSON object');
    const d = body as Record<string, unknown>;
    const need = (key: string, ok: (v: unknown) => boolean, what: string, optional = false) => {
      if (!(key in d)) {
        if (optional) return;
        throw new ImageError(400, `Invalid ticket: missing required parameter "${key}"`);
      }
      if (!ok(d[key])) throw new ImageError(400, `Invalid ticket: "${key}" must be ${what}`);
    };
    const str = (v: unknown) => typeof v === 'string';
    need('uuid', str, 'a string');
    need('size', (v) => int(v) && v >= 0, 'a non-negative integer');
    need('ops', Array.isArray, 'a list');
    need('timeout', (v) => int(v) && v >= 0, 'a non-negative integer');
    need('url', str, 'a string');
    need('inactivity_timeout', (v) => int(v) && v >= 0, 'a non-negative integer', true);
    need('transfer_id', str, 'a string', true);
    need('filename', str, 'a string', true);
    need('sparse', (v) => typeof v === 'boolean', 'a boolean', true);
    need('dirty', (v) => typeof v === 'boolean', 'a boolean', true);
    const t = d as unknown as ImageioTicket;
    if (t.uuid !== uuid) throw new ImageError(400, 'Invalid ticket: "uuid" differs from the ticket id in the URL');
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(uuid)) throw new ImageError(400, 'Invalid ticket: "uuid" must be 1..128 letters, digits, ".", "_" or "-"');
    if (typeof t.filename === 'string' && /[\\/"\r\n]/.test(t.filename)) throw new ImageError(400, 'Invalid ticket: "filename" must be a plain file name');
    const ops = this.checkOps(t.ops);
    const timeout = this.seconds(t.timeout, this.defaults.timeout, 'timeout');
    const inactivity = this.seconds(t.inactivity_timeout, this.defaults.inactivity, 'inactivity_timeout');
    const current = this.tickets.get(uuid);
    if (current) {
      // vdsm may send the same ticket again after a lost answer: renew it. A different target is a conflict.
      if (current.url !== t.url || current.size !== t.size || current.ops.join() !== ops.join()) throw new ImageError(409, `ticket ${uuid} exists with a different url, size or ops`);
      current.timeout = timeout;
      current.inactivityTimeout = inactivity;
      current.extend(timeout);
      return;
    }
    if (ops.includes('write')) this.checkSize(t.size, this.defaults.maxVirtualSize);
    const scheme = /^([a-z+]+):/.exec(t.url)?.[1];
    const common = { id: uuid, ops, timeout, inactivity, sparse: t.sparse ?? false, dirty: t.dirty ?? false, filename: t.filename, transferId: t.transfer_id ?? `(ticket/${uuid.slice(0, 18)})` };
    if (scheme === 'file') {
      this.add(await this.openFileTicket({ ...common, image: this.imageOfFileUrl(t.url), size: t.size, maxVirtualSize: this.defaults.maxVirtualSize, flavour: 'imageio', exactSize: false }));
    } else if (scheme === 'nbd' || scheme === 'nbd+unix') {
      let parsed: ReturnType<typeof parseNbdUrl>;
      try {
        parsed = parseNbdUrl(t.url);
      } catch (err) {
        throw new ImageError(400, `Invalid ticket: "url": ${(err as Error).message}`);
      }
      this.add(new Ticket({
        ...common, inactivityTimeout: inactivity, url: t.url, mode: 'nbd', size: t.size, maxVirtualSize: this.defaults.maxVirtualSize, flavour: 'imageio',
        backend: new NbdBackend(parsed.address, parsed.exportName, common.dirty, this.maxConnections),
      }));
    } else {
      throw new ImageError(400, `Invalid ticket: unsupported url scheme ${JSON.stringify(scheme ?? t.url.slice(0, 10))} (file, nbd)`);
    }
  }

  /** A file URL must name an image directly in the storage directory; the answer never repeats the path. */
  private imageOfFileUrl(url: string): string {
    let path: string;
    try {
      path = fileURLToPath(url);
    } catch {
      throw new ImageError(400, 'Invalid ticket: "url" is not a valid file URL');
    }
    const name = basename(path);
    let dir: string;
    try {
      dir = realpathSync(dirname(path));
    } catch {
      dir = '';
    }
    if (dir !== this.realStorage || !NAME.test(name)) throw new ImageError(400, 'Invalid ticket: a file "url" must name an image in the server\'s storage directory');
    return name;
  }

  /** The ticket behind an id; unknown ids get the same answer whether they never existed or were forgotten. */
  get(id: string): Ticket {
    if (typeof id !== 'string' || id === '') throw new ImageError(403, 'no ticket given: data requests go to /images/<ticket id>');
    const t = this.tickets.get(id);
    if (t) return t;
    if (this.tombstones.has(id)) throw new ImageError(403, 'ticket deleted');
    throw new ImageError(403, 'no such ticket');
  }

  /** Looks up and authorizes in one step (the data API's entry point). */
  authorize(id: string, op: TicketOp): Ticket {
    const t = this.get(id);
    t.authorize(op);
    if (t.image && this.unchecked(t.image) && !t.ops.includes('write')) throw new ImageError(409, `image ${t.image} is being written in place; it can be read once the format check passed`);
    return t;
  }

  /** Control API view; 404 for unknown (imageio). */
  ticketStatus(id: string): TicketStatus {
    const t = this.tickets.get(id);
    if (!t) throw new ImageError(404, `No such ticket ${JSON.stringify(id)}`);
    return t.status();
  }

  /** Data API view of a ticket (no host paths); counts as activity. */
  ticketInfo(t: Ticket): TicketInfo {
    t.touch();
    return t.info();
  }

  /** Live tickets, then recently deleted or cancelled ones (with the outcome of their format check). */
  listTickets(): TicketStatus[] {
    return [...[...this.tickets.values()].map((t) => t.status()), ...[...this.tombstones.values()].map((s) => s.status)];
  }

  /** `PATCH /tickets/<id> {timeout}`: the ticket expires `timeout` seconds from now, also after it had expired. */
  extendTicket(id: string, timeout: unknown): TicketStatus {
    if (!int(timeout) || timeout < 0 || timeout > 30 * 86400) throw new ImageError(400, 'timeout must be an integer 0..2592000 (seconds)');
    const t = this.tickets.get(id);
    if (!t) throw new ImageError(404, `No such ticket: ${id}`);
    if (t.state !== 'active' && t.state !== 'finalized') throw new ImageError(409, `ticket is ${t.state}; it cannot be extended`);
    t.extend(timeout);
    return t.status();
  }

  /**
   * `DELETE /tickets/<id>`: cancels the ticket's requests in progress and waits for them to end (409 after the remove
   * timeout; the ticket stays canceled and the DELETE can be repeated), then closes the transfer: a staged upload that
   * received data is checked and published (imageio's flow has no finalize), an image written in place is checked.
   * Unknown ids succeed (DELETE is idempotent). Returns the final status, or undefined for an unknown id.
   */
  async deleteTicket(id: string): Promise<TicketStatus | undefined> {
    const t = this.tickets.get(id);
    if (!t) return this.tombstones.get(id)?.status;
    t.canceled = true;
    t.deleting ??= this.closeOut(t);
    const mine = t.deleting;
    try {
      await mine;
    } finally {
      if (t.deleting === mine && this.tickets.get(id) === t) t.deleting = undefined;
    }
    return this.tombstones.get(id)?.status ?? t.status();
  }

  private async closeOut(t: Ticket): Promise<void> {
    this.imports.get(t.id)?.abort();
    if (!(await t.drain(this.defaults.removeTimeout * 1000))) {
      throw new ImageError(409, `ticket is still in use by ${t.ongoing.size} request(s); repeat the DELETE when they are done`);
    }
    if (t.importProgress?.state === 'running') Object.assign(t.importProgress, { state: 'failed', error: 'ticket deleted' });
    if (t.mode === 'new' && t.state === 'active') {
      // imageio's flow publishes what was written (unwritten ranges read as zeros); Porthole's needs every byte.
      const complete = t.written.missing(t.size).length === 0;
      if (t.written.covered() > 0 && (t.flavour === 'imageio' || complete)) await this.publish(t).catch(() => undefined);
      if (t.state === 'active' && t.path) await unlink(t.path).catch(() => undefined);
    } else if (t.mode === 'existing' && t.state !== 'refused' && t.image && this.markedBy(t)) {
      await this.fullCheck(t).catch(() => undefined);
    }
    await t.backend.close();
    this.forget(t, t.state === 'cancelled' ? 'cancelled' : 'deleted');
  }

  private forget(t: Ticket, state: 'deleted' | 'cancelled'): void {
    const status = t.status();
    if (t.state !== 'refused' && t.state !== 'finalized') status.state = state;
    t.state = 'deleted';
    t.endedAt = Date.now();
    this.tickets.delete(t.id);
    this.tombstones.set(t.id, { at: Date.now(), status });
  }

  /** `DELETE /tickets/` (imageio): every ticket. */
  async deleteAll(): Promise<void> {
    await Promise.all([...this.tickets.keys()].map((id) => this.deleteTicket(id)));
  }

  private async sweep(): Promise<void> {
    const now = Date.now();
    for (const t of this.tickets.values()) {
      // An expired in-place writer is quick-checked once: a dangerous header is caught even if nobody deletes the ticket.
      if (t.state === 'active' && t.overdue(now) && !t.expiryChecked && !t.ongoing.size && t.mode === 'existing' && this.markedBy(t)) {
        t.expiryChecked = true;
        await this.quickCheck(t).catch(() => undefined);
      }
    }
    for (const [id, s] of this.tombstones) if (now - s.at > this.defaults.keepEnded * 1000) this.tombstones.delete(id);
  }

  // ---- unchecked in-place writes ----

  private markers = new Map<string, string>();

  private markerPath(image: string): string {
    return join(this.storageDir, `.${image}.unchecked`);
  }

  private unchecked(image: string): boolean {
    return this.markers.has(image);
  }

  private markedBy(t: Ticket): boolean {
    return !!t.image && this.markers.get(t.image) === t.id;
  }

  /** Before the first in-place write: the image is unusable for others until checked, also across a restart. */
  private async markWriting(t: Ticket): Promise<void> {
    if (t.mode !== 'existing' || !t.image || this.markedBy(t)) return;
    this.markers.set(t.image, t.id);
    await writeFile(this.markerPath(t.image), t.id, { mode: 0o600 });
  }

  private async unmark(image: string): Promise<void> {
    this.markers.delete(image);
    await unlink(this.markerPath(image)).catch(() => undefined);
  }

  /** The image is refused: a staged upload is removed, an image in place is moved to `.NAME.refused`. */
  private async refuse(t: Ticket, report: FormatReport): Promise<never> {
    t.check = report;
    for (const o of this.tickets.values()) {
      if (o === t || (t.mode === 'existing' && o.image === t.image && o.mode === 'existing')) {
        o.state = 'refused';
        o.check = report;
      }
    }
    if (t.mode === 'new' && t.path) await unlink(t.path).catch(() => undefined);
    if (t.mode === 'existing' && t.image && t.path) {
      await rename(t.path, join(this.storageDir, `.${t.image}.refused`)).catch(() => undefined);
      await this.unmark(t.image);
    }
    throw new ImageError(422, `image refused: ${report.reason}`);
  }

  private limits(t: Ticket) {
    return { maxVirtualSize: t.maxVirtualSize, expectFormat: t.format };
  }

  private async quickCheck(t: Ticket): Promise<void> {
    if (!t.path || t.mode === 'nbd') return;
    const report = await checkHeader(t.path, this.limits(t));
    if (!report.ok) await this.refuse(t, report);
  }

  private async fullCheck(t: Ticket): Promise<FormatReport> {
    const report = await checkImage(t.path as string, this.limits(t));
    if (!report.ok) await this.refuse(t, report);
    t.check = report;
    if (t.mode === 'existing' && t.image) await this.unmark(t.image);
    return report;
  }

  // ---- data operations ----

  /**
   * Runs one request on a ticket: it counts as in progress (DELETE waits for it and can cancel it through the
   * signal), and its end renews the ticket. A request the DELETE canceled is answered 403.
   */
  async run<T>(t: Ticket, offset: number, work: (op: Operation) => Promise<T>): Promise<T> {
    const op = t.begin(offset);
    try {
      return await work(op);
    } catch (err) {
      if (op.controller.signal.aborted) throw new ImageError(403, 'transfer canceled: the ticket was deleted');
      throw err;
    } finally {
      t.end(op);
    }
  }

  /** Bytes the ticket can read: its size, or less when the image or export is shorter (imageio's available range). */
  async available(t: Ticket): Promise<number> {
    return Math.min(t.size, await t.backend.size().catch(() => 0));
  }

  async openRead(t: Ticket, span: Interval, op: Operation): Promise<Readable> {
    const stream = await t.backend.read(span.start, span.end, op.controller.signal);
    stream.on('data', (chunk: Buffer) => {
      t.bytesRead += chunk.length;
      op.done += chunk.length;
    });
    stream.once('end', () => t.read.add(span.start, span.end));
    return stream;
  }

  /** Writes `body` at `start`; records what landed even when the body is cut short (that is where a resume starts). */
  async write(t: Ticket, start: number, length: number, body: Readable, op: Operation): Promise<number> {
    await this.markWriting(t);
    const onData = (n: number) => {
      t.bytesWritten += n;
      op.done += n;
    };
    let landed = 0;
    try {
      landed = await t.backend.write(start, body, op.controller.signal, onData);
    } catch (err) {
      if (err instanceof WriteCut) {
        landed = err.landed;
        throw new ImageError(400, `the request body ended after ${landed} of ${length} bytes: ${err.message}`);
      }
      throw err;
    } finally {
      t.written.add(start, start + landed);
    }
    if (landed !== length) throw new ImageError(400, `the request body ended after ${landed} of ${length} bytes`);
    return landed;
  }

  async zero(t: Ticket, span: Interval): Promise<void> {
    await this.markWriting(t);
    await t.backend.zero(span.start, span.end, t.sparse);
    t.written.add(span.start, span.end);
  }

  /** Flushes to storage; an image written through the ticket then gets the quick format check (422 when it fails). */
  async flush(t: Ticket): Promise<void> {
    await t.backend.flush();
    if (t.mode === 'new' || this.markedBy(t)) await this.quickCheck(t);
  }

  async extents(t: Ticket, context: 'zero' | 'dirty'): Promise<Extent[] | DirtyExtent[]> {
    if (context === 'dirty' && !t.dirty) throw new ImageError(404, 'Ticket does not support dirty extents');
    return t.backend.extents(context);
  }

  /** A plain hash of a range (at most 256 MiB): lets a client confirm a resumed upload continues the same file. */
  async rangeChecksum(t: Ticket, span: Interval, algorithm: string): Promise<string> {
    if (span.end - span.start > 256 * MiB) throw new ImageError(400, 'checksum ranges are limited to 256 MiB');
    await hashReady;
    const h = hasher(algorithm);
    const stream = await t.backend.read(span.start, span.end, new AbortController().signal);
    for await (const chunk of stream as AsyncIterable<Buffer>) h.update(chunk);
    return h.digest().toString('hex');
  }

  /** imageio's image checksum (blkhash) of the whole image as the ticket sees it. */
  async checksum(t: Ticket, algorithm: string, blockSize: number, op: Operation): Promise<{ algorithm: string; block_size: number; checksum: string }> {
    await hashReady;
    const size = await this.available(t);
    const extents = (await t.backend.extents('zero') as Extent[]).filter((e) => e.start < size).map((e) => ({ ...e, length: Math.min(e.length, size - e.start) }));
    const hash = new BlockHash(algorithm, blockSize);
    for (const b of blocks(extents, blockSize)) {
      if (op.controller.signal.aborted) throw new Error('transfer canceled');
      if (b.zero) hash.zero(b.length);
      else {
        const parts: Buffer[] = [];
        for await (const c of (await t.backend.read(b.start, b.start + b.length, op.controller.signal)) as AsyncIterable<Buffer>) parts.push(c);
        hash.data(Buffer.concat(parts));
      }
      op.done += b.length;
    }
    return { algorithm, block_size: blockSize, checksum: hash.hexdigest() };
  }

  /**
   * Porthole's finalize: closes writes and checks the format. A new image must be complete and is linked under its
   * name only when the check passes (never replacing another file); otherwise the staging file is removed. An image
   * written in place that fails is moved to a hidden ".NAME.refused" so nothing opens it by its name.
   */
  async finalize(t: Ticket): Promise<TicketStatus> {
    if (t.finalizing) throw new ImageError(409, 'finalize is already running for this ticket');
    if (t.mode === 'nbd') {
      await t.backend.flush();
      return t.status();
    }
    if (t.mode === 'new') {
      // A cut or partial upload must never be published; zero ranges count as written (clients skip holes that way).
      const gaps = t.written.missing(t.size);
      if (gaps.length) {
        throw new ImageError(409, `upload incomplete: ${t.size - t.written.covered()} bytes not written yet (first gap ${gaps[0].start}-${gaps[0].end - 1}); resume at byte ${gaps[0].start}`);
      }
    }
    t.finalizing = true;
    try {
      await t.backend.flush();
      if (t.mode === 'new') await this.publish(t);
      else await this.fullCheck(t);
      t.state = 'finalized';
      return t.status();
    } finally {
      t.finalizing = false;
    }
  }

  /** Checks a staged upload and links it under its name (never replacing another file). */
  private async publish(t: Ticket): Promise<void> {
    await t.backend.flush();
    await this.fullCheck(t);
    try {
      await link(t.path as string, t.finalPath as string);
    } catch (err) {
      throw new ImageError(409, `cannot publish image ${t.image}: ${(err as NodeJS.ErrnoException).code === 'EEXIST' ? 'the name was taken meanwhile' : (err as NodeJS.ErrnoException).code}`);
    }
    await unlink(t.path as string);
    t.path = (t.backend as FileBackend).path = t.finalPath as string;
    t.state = 'finalized';
  }

  /** The owner's cancel of a staged upload: its requests end, the staged bytes are discarded. */
  async cancel(t: Ticket): Promise<TicketStatus> {
    if (t.mode !== 'new') throw new ImageError(409, 'this ticket does not stage an upload; there is nothing to cancel');
    t.canceled = true;
    try {
      if (!(await t.drain(this.defaults.removeTimeout * 1000))) throw new ImageError(409, 'the upload is still in use; try again');
    } finally {
      t.canceled = false;
    }
    if (t.state === 'active' && t.path) await unlink(t.path).catch(() => undefined);
    t.state = 'cancelled';
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
      return { path: ticket.path as string, progress: ticket.importProgress, written: ticket.written };
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
        await unlink(t.path as string).catch(() => undefined);
      },
    );
    return t.status();
  }

  close(): void {
    clearInterval(this.sweeper);
    for (const a of this.imports.values()) a.abort();
    for (const t of this.tickets.values()) {
      for (const op of t.ongoing) op.controller.abort();
      void t.backend.close();
    }
  }
}

