import { randomBytes } from 'node:crypto';
import { ImageError } from './errors';
import { IntervalSet } from './ranges';
import type { FormatReport } from './checks';

export type TicketOp = 'read' | 'write';

export interface TicketRequest {
  /** Image name inside the storage directory (letters, digits, `.`, `_`, `-`; no leading dot). */
  image: string;
  /** Bytes; required for a new image, and must equal the size of an existing one. */
  size?: number;
  ops: TicketOp[];
  /** Seconds until the ticket expires (default 300). */
  timeout?: number;
  /** Seconds without any request after which an unused ticket expires (default 60; 0 disables). */
  inactivityTimeout?: number;
  /** Format the finished upload must have; undefined accepts raw and qcow2. */
  format?: 'raw' | 'qcow2';
  /** Largest virtual size accepted after upload (default: the server's limit). */
  maxVirtualSize?: number;
}

export interface ImportProgress {
  url: string;
  state: 'running' | 'done' | 'failed';
  bytes: number;
  total?: number;
  attempts: number;
  error?: string;
}

export type TicketState = 'active' | 'finalized' | 'refused' | 'expired' | 'revoked' | 'cancelled';

export interface TicketStatus {
  id: string;
  image: string;
  size: number;
  ops: TicketOp[];
  /** `new`: writes land in a hidden staging file, renamed after the format check; `existing`: in place. */
  mode: 'new' | 'existing';
  state: TicketState;
  created: string;
  expires: string;
  timeout: number;
  inactivityTimeout: number;
  idleSeconds: number;
  activeConnections: number;
  transferred: { read: number; written: number };
  /** Bytes of the image written through this ticket, and where a sequential upload continues. */
  upload: { covered: number; resumeOffset: number; ranges: Array<[number, number]> };
  import?: ImportProgress;
  check?: FormatReport;
}

/** Anything the server can abort when a ticket is revoked or expires (a request's socket). */
export interface Closable {
  destroy(): void;
}

export class Ticket {
  readonly id = randomBytes(24).toString('base64url');
  readonly createdAt = Date.now();
  expiresAt: number;
  lastActivity = Date.now();
  state: TicketState = 'active';
  /** When the ticket stopped being usable (revoked, expired, cancelled, refused); ended tickets are forgotten later. */
  endedAt?: number;
  readonly connections = new Set<Closable>();
  readonly written = new IntervalSet();
  bytesRead = 0;
  bytesWritten = 0;
  importProgress?: ImportProgress;
  check?: FormatReport;
  /** Set while the format check of finalize runs: writes then would change what is being checked. */
  finalizing = false;

  constructor(
    readonly image: string,
    readonly size: number,
    readonly ops: TicketOp[],
    /** File the data API reads and writes: the staging file for a new image, else the image itself. */
    public path: string,
    readonly finalPath: string,
    readonly mode: 'new' | 'existing',
    public timeoutMs: number,
    readonly inactivityMs: number,
    readonly format: 'raw' | 'qcow2' | undefined,
    readonly maxVirtualSize: number,
  ) {
    this.expiresAt = this.createdAt + timeoutMs;
  }

  /** True once the absolute or the inactivity deadline has passed. */
  overdue(now = Date.now()): boolean {
    if (now >= this.expiresAt) return true;
    return this.inactivityMs > 0 && this.connections.size === 0 && !this.importRunning() && now - this.lastActivity >= this.inactivityMs;
  }

  importRunning(): boolean {
    return this.importProgress?.state === 'running';
  }

  closeConnections(): void {
    for (const c of this.connections) c.destroy();
    this.connections.clear();
  }

  /** Throws the refusal for a request needing `op`; every data request goes through here. */
  authorize(op: TicketOp): void {
    if (this.state === 'revoked') throw new ImageError(403, 'ticket revoked');
    if (this.state === 'expired' || this.overdue()) throw new ImageError(403, `ticket expired at ${new Date(this.expiresAt).toISOString()}`);
    if (this.state === 'cancelled') throw new ImageError(403, 'upload cancelled');
    if (this.state === 'refused') throw new ImageError(409, `image refused by the format check: ${this.check?.reason}`);
    if (!this.ops.includes(op)) throw new ImageError(403, `ticket does not allow ${op}`);
    if (this.importRunning()) throw new ImageError(409, 'the image is still being imported');
    if (op === 'write' && this.state === 'finalized') throw new ImageError(409, 'upload already finalized; writes are closed');
    if (op === 'write' && this.finalizing) throw new ImageError(409, 'the upload is being finalized; writes are closed');
    this.lastActivity = Date.now();
  }

  status(): TicketStatus {
    const now = Date.now();
    return {
      id: this.id,
      image: this.image,
      size: this.size,
      ops: [...this.ops],
      mode: this.mode,
      state: this.state,
      created: new Date(this.createdAt).toISOString(),
      expires: new Date(this.expiresAt).toISOString(),
      timeout: Math.round(this.timeoutMs / 1000),
      inactivityTimeout: Math.round(this.inactivityMs / 1000),
      idleSeconds: this.connections.size ? 0 : Math.floor((now - this.lastActivity) / 1000),
      activeConnections: this.connections.size,
      transferred: { read: this.bytesRead, written: this.bytesWritten },
      upload: { covered: this.written.covered(), resumeOffset: this.written.contiguousFromZero(), ranges: this.written.intervals().map((r) => [r.start, r.end]) },
      ...(this.importProgress ? { import: { ...this.importProgress } } : {}),
      ...(this.check ? { check: { ...this.check } } : {}),
    };
  }
}
