import { randomBytes } from 'node:crypto';
import { uptime } from 'node:os';
import type { Socket } from 'node:net';
import type { Backend } from './backends';
import type { FormatReport } from './checks';
import { ImageError } from './errors';
import { IntervalSet } from './ranges';

export type TicketOp = 'read' | 'write';

/** A ticket as ovirt-imageio's control API takes it (`PUT /tickets/<uuid>`, what vdsm sends). */
export interface ImageioTicket {
  uuid: string;
  size: number;
  ops: TicketOp[];
  /** Seconds; the ticket expires this long after it was made, extended or last used. */
  timeout: number;
  /** `file:///STORAGE/NAME` (an image in the storage directory, existing or new) or `nbd:unix:PATH:exportname=NAME`. */
  url: string;
  /** Seconds an idle connection of this ticket is kept open. */
  inactivity_timeout?: number;
  transfer_id?: string;
  /** Offered to browsers in Content-Disposition on GET. */
  filename?: string;
  /** Zero may deallocate (punch holes) instead of allocating zeros. */
  sparse?: boolean;
  /** `extents?context=dirty` is served (an NBD export with a qemu dirty bitmap). */
  dirty?: boolean;
}

/** A ticket by image name: Porthole's own flow (TypeScript API, `POST /tickets`, CLI). */
export interface TicketRequest {
  /** Image name inside the storage directory (letters, digits, `.`, `_`, `+`, `-`; no leading dot). */
  image: string;
  /** Bytes; required for a new image, and must equal the size of an existing one. */
  size?: number;
  ops: TicketOp[];
  /** Seconds until the ticket expires unless used or extended (default 300). */
  timeout?: number;
  /** Seconds an idle connection is kept open (default 60; 0 = no limit). */
  inactivityTimeout?: number;
  /** Format the finished upload must have; undefined accepts raw and qcow2. */
  format?: 'raw' | 'qcow2';
  /** Largest virtual size accepted (at most the server's limit). */
  maxVirtualSize?: number;
  /** Zero punches holes (default true here; imageio tickets default to false). */
  sparse?: boolean;
  filename?: string;
  transferId?: string;
}

export interface ImportProgress {
  url: string;
  state: 'running' | 'done' | 'failed';
  bytes: number;
  total?: number;
  attempts: number;
  error?: string;
}

/** `deleted` tickets are gone from the control API; they are remembered a while so late requests get a clear refusal. */
export type TicketState = 'active' | 'finalized' | 'refused' | 'cancelled' | 'deleted';
/** `new`: writes land in a hidden staging file published after the format check; `existing`: in place; `nbd`: an NBD export. */
export type TicketMode = 'new' | 'existing' | 'nbd';

/** What the control API reports: imageio's ticket info, plus Porthole's fields. */
export interface TicketStatus {
  // ovirt-imageio's fields (GET /tickets/<uuid>)
  uuid: string;
  url: string;
  size: number;
  ops: TicketOp[];
  timeout: number;
  inactivity_timeout: number;
  /** Monotonic seconds (since boot) when the ticket expires, as imageio reports it. */
  expires: number;
  idle_time: number;
  active: boolean;
  canceled: boolean;
  connections: number;
  sparse: boolean;
  dirty: boolean;
  transfer_id?: string;
  filename?: string;
  /** Bytes of the image transferred (only for a read-only or write-only ticket, as imageio). */
  transferred?: number;
  // Porthole's fields
  id: string;
  image?: string;
  mode: TicketMode;
  state: TicketState;
  expired: boolean;
  expiresAt: string;
  bytes: { read: number; written: number };
  /** Bytes of the image written through this ticket, and where a sequential upload continues. */
  upload: { covered: number; resumeOffset: number; ranges: Array<[number, number]> };
  import?: ImportProgress;
  check?: FormatReport;
}

/** What a ticket holder sees through the data API (`GET /images/<ticket>/info`): no host paths or URLs. */
export interface TicketInfo {
  /** The disk the transfer targets, by name. */
  target: string;
  size: number;
  ops: TicketOp[];
  mode: TicketMode;
  state: TicketState;
  expired: boolean;
  expiresAt: string;
  timeout: number;
  upload: TicketStatus['upload'];
  import?: ImportProgress;
  check?: FormatReport;
}

/** One request in progress on a ticket: DELETE cancels it and waits for it to end. */
export interface Operation {
  offset: number;
  done: number;
  controller: AbortController;
}

export interface TicketInit {
  id?: string;
  url: string;
  image?: string;
  mode: TicketMode;
  size: number;
  ops: TicketOp[];
  timeout: number;
  inactivityTimeout: number;
  sparse: boolean;
  dirty: boolean;
  transferId?: string;
  filename?: string;
  format?: 'raw' | 'qcow2';
  maxVirtualSize: number;
  /** Porthole's flow (coverage-checked finalize) or imageio's (published when the ticket is deleted). */
  flavour: 'porthole' | 'imageio';
  backend: Backend;
  path?: string;
  finalPath?: string;
}

export class Ticket {
  readonly id: string;
  readonly url: string;
  readonly image?: string;
  readonly mode: TicketMode;
  readonly size: number;
  readonly ops: TicketOp[];
  timeout: number;
  inactivityTimeout: number;
  readonly sparse: boolean;
  readonly dirty: boolean;
  readonly transferId?: string;
  readonly filename?: string;
  readonly format?: 'raw' | 'qcow2';
  readonly maxVirtualSize: number;
  readonly flavour: 'porthole' | 'imageio';
  readonly backend: Backend;
  /** File the data API reads and writes (staging file of a new image, else the image); undefined for NBD. */
  path?: string;
  readonly finalPath?: string;

  expiresAt: number;
  accessAt = Date.now();
  state: TicketState = 'active';
  /** Set by DELETE (or cancel): no new request may start; requests in progress are canceled. */
  canceled = false;
  endedAt?: number;
  /** HTTP connections that used this ticket (imageio's "connections"). */
  readonly connections = new Set<Socket>();
  readonly ongoing = new Set<Operation>();
  readonly written = new IntervalSet();
  readonly read = new IntervalSet();
  bytesRead = 0;
  bytesWritten = 0;
  importProgress?: ImportProgress;
  check?: FormatReport;
  /** Set while finalize's format check runs: writes then would change what is being checked. */
  finalizing = false;
  /** The sweeper ran the quick check after this ticket expired (reset when it is used again). */
  expiryChecked = false;
  /** A DELETE in progress: later DELETEs wait for the same end. */
  deleting?: Promise<void>;
  private idle?: () => void;

  constructor(init: TicketInit) {
    this.id = init.id ?? randomBytes(24).toString('base64url');
    this.url = init.url;
    this.image = init.image;
    this.mode = init.mode;
    this.size = init.size;
    this.ops = init.ops;
    this.timeout = init.timeout;
    this.inactivityTimeout = init.inactivityTimeout;
    this.sparse = init.sparse;
    this.dirty = init.dirty;
    this.transferId = init.transferId;
    this.filename = init.filename;
    this.format = init.format;
    this.maxVirtualSize = init.maxVirtualSize;
    this.flavour = init.flavour;
    this.backend = init.backend;
    this.path = init.path;
    this.finalPath = init.finalPath;
    this.expiresAt = Date.now() + this.timeout * 1000;
  }

  /** Write implies read, as in imageio. */
  may(op: TicketOp): boolean {
    return op === 'read' ? this.ops.includes('read') || this.ops.includes('write') : this.ops.includes(op);
  }

  overdue(now = Date.now()): boolean {
    return now >= this.expiresAt;
  }

  /** A completed request (or OPTIONS, or an info request) renews the ticket: it expires `timeout` seconds later. */
  touch(): void {
    this.accessAt = Date.now();
    this.expiresAt = Math.max(this.expiresAt, this.accessAt + this.timeout * 1000);
    this.expiryChecked = false;
  }

  /** `PATCH /tickets/<id> {timeout}`: expires `timeout` seconds from now, also when it had expired already. */
  extend(timeout: number): void {
    this.expiresAt = Date.now() + timeout * 1000;
    this.expiryChecked = false;
  }

  /** Throws the refusal for a request needing `op`; every data request goes through here. */
  authorize(op: TicketOp): void {
    if (this.state === 'deleted') throw new ImageError(403, 'ticket deleted');
    if (this.state === 'cancelled') throw new ImageError(403, 'upload cancelled');
    if (this.canceled) throw new ImageError(403, 'transfer canceled: the ticket is being deleted');
    if (this.overdue()) throw new ImageError(403, `ticket expired at ${new Date(this.expiresAt).toISOString()}; the ticket's owner can extend it`);
    if (this.state === 'refused') throw new ImageError(409, `image refused by the format check: ${this.check?.reason}`);
    if (!this.may(op)) throw new ImageError(403, `ticket does not allow ${op}`);
    if (this.importProgress?.state === 'running') throw new ImageError(409, 'the image is still being imported');
    if (op === 'write' && this.state === 'finalized') throw new ImageError(409, 'upload already finalized; writes are closed');
    if (op === 'write' && this.finalizing) throw new ImageError(409, 'the upload is being finalized; writes are closed');
  }

  /** Starts a request: DELETE can cancel it through its signal and waits for `end`. */
  begin(offset: number): Operation {
    const op: Operation = { offset, done: 0, controller: new AbortController() };
    this.ongoing.add(op);
    return op;
  }

  end(op: Operation): void {
    this.ongoing.delete(op);
    this.touch();
    if (!this.ongoing.size) this.idle?.();
  }

  /** Cancels the requests in progress and resolves once none is left, or with false after `ms`. */
  async drain(ms: number): Promise<boolean> {
    for (const op of this.ongoing) op.controller.abort();
    if (!this.ongoing.size) return true;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.idle = undefined;
        resolve(false);
      }, ms);
      this.idle = () => {
        clearTimeout(timer);
        this.idle = undefined;
        resolve(true);
      };
    });
  }

  /** Bytes transferred, as imageio counts them: completed ranges plus requests in progress, one op only. */
  private transferred(): number | undefined {
    if (this.ops.length !== 1) return undefined;
    const set = this.ops[0] === 'write' ? this.written : this.read;
    let n = set.covered();
    for (const op of this.ongoing) n += op.done;
    return Math.min(n, this.size);
  }

  private uploadState(): TicketStatus['upload'] {
    return { covered: this.written.covered(), resumeOffset: this.written.contiguousFromZero(), ranges: this.written.intervals().map((r) => [r.start, r.end]) };
  }

  status(): TicketStatus {
    const now = Date.now();
    const transferred = this.transferred();
    return {
      uuid: this.id,
      url: this.url,
      size: this.size,
      ops: [...this.ops],
      timeout: this.timeout,
      inactivity_timeout: this.inactivityTimeout,
      expires: Math.floor(uptime() + (this.expiresAt - now) / 1000),
      idle_time: this.ongoing.size ? 0 : Math.floor((now - this.accessAt) / 1000),
      active: this.ongoing.size > 0,
      canceled: this.canceled,
      connections: this.connections.size,
      sparse: this.sparse,
      dirty: this.dirty,
      ...(this.transferId !== undefined ? { transfer_id: this.transferId } : {}),
      ...(this.filename !== undefined ? { filename: this.filename } : {}),
      ...(transferred !== undefined ? { transferred } : {}),
      id: this.id,
      ...(this.image !== undefined ? { image: this.image } : {}),
      mode: this.mode,
      state: this.state,
      expired: this.state === 'active' && this.overdue(now),
      expiresAt: new Date(this.expiresAt).toISOString(),
      bytes: { read: this.bytesRead, written: this.bytesWritten },
      upload: this.uploadState(),
      ...(this.importProgress ? { import: { ...this.importProgress } } : {}),
      ...(this.check ? { check: { ...this.check } } : {}),
    };
  }

  info(): TicketInfo {
    return {
      target: this.filename ?? this.image ?? (this.transferId ? `transfer ${this.transferId}` : 'NBD export'),
      size: this.size,
      ops: [...this.ops],
      mode: this.mode,
      state: this.state,
      expired: this.state === 'active' && this.overdue(),
      expiresAt: new Date(this.expiresAt).toISOString(),
      timeout: this.timeout,
      upload: this.uploadState(),
      ...(this.importProgress ? { import: { ...this.importProgress } } : {}),
      ...(this.check ? { check: { ...this.check } } : {}),
    };
  }
}
