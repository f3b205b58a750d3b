// A small NBD client (doc/proto.md of the NBD project): fixed newstyle handshake, NBD_OPT_GO, structured replies,
// metadata contexts (base:allocation, qemu:allocation-depth, qemu:dirty-bitmap:NAME) and block status. No maintained
// NBD client exists for Node; this one covers what an image transfer needs from qemu-nbd: read, write, write
// zeroes, flush and extents, with many requests in flight on one connection.
import { connect as netConnect, Socket } from 'node:net';
import { ByteQueue } from '@porthole/transport/byte-queue';

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const OPT_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;

const OPT_GO = 7;
const OPT_STRUCTURED_REPLY = 8;
const OPT_LIST_META_CONTEXT = 9;
const OPT_SET_META_CONTEXT = 10;

const REP_ACK = 1;
const REP_INFO = 3;
const REP_META_CONTEXT = 4;
const REP_ERR_BIT = 0x80000000;
const INFO_EXPORT = 0;
const INFO_BLOCK_SIZE = 3;

/** Transmission flags (sent with the export size). */
export const TX = { HAS_FLAGS: 1, READ_ONLY: 2, SEND_FLUSH: 4, SEND_FUA: 8, SEND_TRIM: 32, SEND_WRITE_ZEROES: 64, CAN_MULTI_CONN: 256 } as const;

const CMD_READ = 0;
const CMD_WRITE = 1;
const CMD_DISC = 2;
const CMD_FLUSH = 3;
const CMD_WRITE_ZEROES = 6;
const CMD_BLOCK_STATUS = 7;
const CMD_FLAG_NO_HOLE = 2;

const REPLY_FLAG_DONE = 1;
const REPLY_NONE = 0;
const REPLY_OFFSET_DATA = 1;
const REPLY_OFFSET_HOLE = 2;
const REPLY_BLOCK_STATUS = 5;
const REPLY_ERROR_BIT = 0x8000;

export const BASE_ALLOCATION = 'base:allocation';
export const ALLOCATION_DEPTH = 'qemu:allocation-depth';
export const DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';
/** base:allocation flags. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;
/** qemu:dirty-bitmap flag. */
export const STATE_DIRTY = 1;

/** Requests and replies carrying data stay within the 32 MiB every NBD server must accept. */
export const MAX_PAYLOAD = 32 * 1024 * 1024;
/** Write zeroes and block status lengths are 32-bit; qemu-nbd caps write zeroes just under 2 GiB. */
const MAX_SPAN = 1024 * 1024 * 1024;

const ERRNO: Record<number, string> = { 1: 'EPERM', 5: 'EIO', 12: 'ENOMEM', 22: 'EINVAL', 28: 'ENOSPC', 75: 'EOVERFLOW', 95: 'ENOTSUP', 108: 'ESHUTDOWN' };

/** An error the NBD server answered (errno name in `code`) or a protocol failure (`code` 'EPROTO'). */
export class NbdError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
    this.name = 'NbdError';
  }
}

export type NbdAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

/**
 * Parses the URL forms qemu and ovirt-imageio accept: `nbd:unix:PATH[:exportname=NAME]`,
 * `nbd:HOST:PORT[:exportname=NAME]`, `nbd://HOST:PORT/NAME` and `nbd+unix:///NAME?socket=PATH`.
 */
export function parseNbdUrl(url: string): { address: NbdAddress; exportName: string } {
  let m = /^nbd:unix:([^:]+)(?::exportname=(.*))?$/.exec(url);
  if (m) return { address: { kind: 'unix', path: m[1] }, exportName: m[2] ?? '' };
  m = /^nbd:([^:/][^:]*):(\d{1,5})(?::exportname=(.*))?$/.exec(url);
  if (m) return { address: { kind: 'tcp', host: m[1], port: Number(m[2]) }, exportName: m[3] ?? '' };
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new NbdError('EINVAL', 'not an NBD URL (nbd:unix:PATH:exportname=NAME, nbd:HOST:PORT:exportname=NAME, nbd://HOST:PORT/NAME)');
  }
  const name = decodeURIComponent(u.pathname.replace(/^\//, ''));
  if (u.protocol === 'nbd:' && u.hostname) return { address: { kind: 'tcp', host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 10809) }, exportName: name };
  if (u.protocol === 'nbd+unix:' && u.searchParams.get('socket')) return { address: { kind: 'unix', path: u.searchParams.get('socket') as string }, exportName: name };
  throw new NbdError('EINVAL', 'not an NBD URL (nbd:unix:PATH:exportname=NAME, nbd:HOST:PORT:exportname=NAME, nbd://HOST:PORT/NAME)');
}

/** Exact-length reads over a socket's data events: the handshake and the reply loop both read through it. */
class ByteReader {
  private readonly received = new ByteQueue();
  private waiter?: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void };
  private failure?: Error;

  constructor(sock: Socket) {
    sock.on('data', (c: Buffer) => {
      this.received.push(c);
      this.pump();
    });
    sock.on('error', (e) => this.fail(e));
    sock.on('close', () => this.fail(new NbdError('EPROTO', 'the NBD server closed the connection')));
  }

  read(n: number): Promise<Buffer> {
    if (this.waiter) throw new Error('ByteReader: one read at a time');
    if (n === 0) return Promise.resolve(Buffer.alloc(0));
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.pump();
    });
  }

  private pump(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.received.length >= w.n) {
      this.waiter = undefined;
      w.resolve(this.received.take(w.n));
    } else if (this.failure) {
      this.waiter = undefined;
      w.reject(this.failure);
    }
  }


  fail(err: Error): void {
    this.failure ??= err;
    this.pump();
  }
}

export interface BlockStatusExtent {
  length: number;
  flags: number;
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  data?: Buffer;
  status?: Map<string, BlockStatusExtent[]>;
  error?: NbdError;
  resolve(p: Pending): void;
  reject(e: Error): void;
}

export interface NbdConnectOptions {
  /** Also select the export's dirty bitmap (qemu:dirty-bitmap:NAME), when it exposes exactly one. */
  dirty?: boolean;
  /** Milliseconds for connecting and the handshake (default 10 s). */
  timeoutMs?: number;
}

/** One NBD connection in the transmission phase; requests may be issued concurrently. */
export class NbdClient {
  size = 0;
  flags = 0;
  maxPayload = MAX_PAYLOAD;
  structured = false;
  /** Selected metadata contexts by id. */
  readonly contexts = new Map<number, string>();
  /** The selected qemu:dirty-bitmap context, if any. */
  dirtyBitmap?: string;
  private readonly reader: ByteReader;
  private readonly pending = new Map<bigint, Pending>();
  private nextHandle = 1n;
  private closed?: Error;

  private constructor(private readonly sock: Socket, readonly exportName: string) {
    this.reader = new ByteReader(sock);
  }

  static async connect(address: NbdAddress, exportName: string, opts: NbdConnectOptions = {}): Promise<NbdClient> {
    const sock = address.kind === 'unix' ? netConnect({ path: address.path }) : netConnect({ host: address.host, port: address.port });
    sock.setNoDelay(true);
    const client = new NbdClient(sock, exportName);
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const timer = setTimeout(() => sock.destroy(new NbdError('ETIMEDOUT', `no NBD handshake within ${timeoutMs / 1000} s`)), timeoutMs);
    try {
      await new Promise<void>((resolve, reject) => {
        sock.once('connect', resolve);
        sock.once('error', reject);
      });
      await client.handshake(!!opts.dirty);
    } catch (err) {
      sock.destroy();
      const e = err as NodeJS.ErrnoException;
      throw e instanceof NbdError ? e : new NbdError(e.code ?? 'EIO', `cannot connect to the NBD server: ${e.code ?? e.message}`);
    } finally {
      clearTimeout(timer);
    }
    sock.on('close', () => client.failAll(new NbdError('EPROTO', 'the NBD server closed the connection')));
    sock.on('error', () => undefined);
    void client.replyLoop();
    return client;
  }

  get readOnly(): boolean {
    return (this.flags & TX.READ_ONLY) !== 0;
  }
  get canFlush(): boolean {
    return (this.flags & TX.SEND_FLUSH) !== 0;
  }
  get canWriteZeroes(): boolean {
    return (this.flags & TX.SEND_WRITE_ZEROES) !== 0;
  }
  get canMultiConn(): boolean {
    return (this.flags & TX.CAN_MULTI_CONN) !== 0;
  }
  hasContext(name: string): boolean {
    return [...this.contexts.values()].includes(name);
  }

  // ---- handshake ----

  private async handshake(dirty: boolean): Promise<void> {
    const hello = await this.reader.read(18);
    if (hello.readBigUInt64BE(0) !== NBDMAGIC) throw new NbdError('EPROTO', 'not an NBD server (bad magic)');
    if (hello.readBigUInt64BE(8) !== IHAVEOPT) throw new NbdError('EPROTO', 'the NBD server does not speak the newstyle handshake');
    const serverFlags = hello.readUInt16BE(16);
    if (!(serverFlags & FLAG_FIXED_NEWSTYLE)) throw new NbdError('EPROTO', 'the NBD server does not support fixed newstyle negotiation');
    const clientFlags = Buffer.alloc(4);
    clientFlags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (serverFlags & FLAG_NO_ZEROES));
    this.sock.write(clientFlags);

    this.sendOption(OPT_STRUCTURED_REPLY);
    const sr = await this.optionReply(OPT_STRUCTURED_REPLY);
    this.structured = sr.type === REP_ACK;
    if (this.structured) {
      const queries = [BASE_ALLOCATION, ALLOCATION_DEPTH];
      if (dirty) {
        const bitmaps = await this.metaContexts(OPT_LIST_META_CONTEXT, [DIRTY_BITMAP_PREFIX]);
        // Which bitmap to report is ambiguous with several; like imageio, use one only when it is the only one.
        if (bitmaps.length === 1) queries.push(bitmaps[0][1]);
      }
      for (const [id, name] of await this.metaContexts(OPT_SET_META_CONTEXT, queries)) {
        this.contexts.set(id, name);
        if (name.startsWith(DIRTY_BITMAP_PREFIX)) this.dirtyBitmap = name;
      }
    }

    const name = Buffer.from(this.exportName, 'utf8');
    const go = Buffer.alloc(4 + name.length + 2);
    go.writeUInt32BE(name.length, 0);
    name.copy(go, 4);
    go.writeUInt16BE(0, 4 + name.length);
    this.sendOption(OPT_GO, go);
    let gotExport = false;
    for (;;) {
      const r = await this.optionReply(OPT_GO);
      if (r.type & REP_ERR_BIT) throw optionError('NBD_OPT_GO', r.type, r.data, this.exportName);
      if (r.type === REP_ACK) break;
      if (r.type !== REP_INFO || r.data.length < 2) throw new NbdError('EPROTO', `unexpected reply ${r.type} to NBD_OPT_GO`);
      const info = r.data.readUInt16BE(0);
      if (info === INFO_EXPORT && r.data.length === 12) {
        this.size = Number(r.data.readBigUInt64BE(2));
        this.flags = r.data.readUInt16BE(10);
        gotExport = true;
      } else if (info === INFO_BLOCK_SIZE && r.data.length === 14) {
        this.maxPayload = Math.min(MAX_PAYLOAD, r.data.readUInt32BE(10));
      }
    }
    if (!gotExport) throw new NbdError('EPROTO', 'the NBD server sent no export size');
  }

  private sendOption(option: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(IHAVEOPT, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(data.length, 12);
    this.sock.write(data.length ? Buffer.concat([h, data]) : h);
  }

  private async optionReply(option: number): Promise<{ type: number; data: Buffer }> {
    const h = await this.reader.read(20);
    if (h.readBigUInt64BE(0) !== OPT_REPLY_MAGIC) throw new NbdError('EPROTO', 'bad option reply magic');
    if (h.readUInt32BE(8) !== option) throw new NbdError('EPROTO', `reply to option ${h.readUInt32BE(8)}, expected ${option}`);
    const length = h.readUInt32BE(16);
    if (length > 1 << 20) throw new NbdError('EPROTO', 'option reply too large');
    return { type: h.readUInt32BE(12), data: await this.reader.read(length) };
  }

  /** NBD_OPT_LIST/SET_META_CONTEXT: [id, name] per context; an unsupported option yields none. */
  private async metaContexts(option: number, queries: string[]): Promise<Array<[number, string]>> {
    const name = Buffer.from(this.exportName, 'utf8');
    const parts = [u32(name.length), name, u32(queries.length)];
    for (const q of queries) {
      const b = Buffer.from(q, 'utf8');
      parts.push(u32(b.length), b);
    }
    this.sendOption(option, Buffer.concat(parts));
    const out: Array<[number, string]> = [];
    for (;;) {
      const r = await this.optionReply(option);
      if (r.type === REP_ACK) return out;
      if (r.type & REP_ERR_BIT) return [];
      if (r.type !== REP_META_CONTEXT || r.data.length < 4) throw new NbdError('EPROTO', `unexpected reply ${r.type} to a meta context option`);
      out.push([r.data.readUInt32BE(0), r.data.subarray(4).toString('utf8')]);
    }
  }

  // ---- transmission ----

  private send(type: number, flags: number, offset: number, length: number, data?: Buffer): Promise<Pending> {
    if (this.closed) return Promise.reject(this.closed);
    const handle = this.nextHandle++;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(handle, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    return new Promise((resolve, reject) => {
      this.pending.set(handle, { type, offset, length, resolve, reject, ...(type === CMD_READ ? { data: Buffer.alloc(length) } : {}), ...(type === CMD_BLOCK_STATUS ? { status: new Map() } : {}) });
      this.sock.write(h);
      if (data) this.sock.write(data);
    });
  }

  private async replyLoop(): Promise<void> {
    try {
      for (;;) {
        const magic = (await this.reader.read(4)).readUInt32BE(0);
        if (magic === SIMPLE_REPLY_MAGIC) {
          const h = await this.reader.read(12);
          const p = this.take(h.readBigUInt64BE(4));
          const err = h.readUInt32BE(0);
          if (err) p.error = serverError(err, '');
          else if (p.type === CMD_READ) (await this.reader.read(p.length)).copy(p.data as Buffer);
          this.finish(p);
        } else if (magic === STRUCTURED_REPLY_MAGIC) {
          const h = await this.reader.read(16);
          const flags = h.readUInt16BE(0);
          const type = h.readUInt16BE(2);
          const handle = h.readBigUInt64BE(4);
          const length = h.readUInt32BE(12);
          const p = this.pending.get(handle);
          if (!p) throw new NbdError('EPROTO', `reply for unknown handle ${handle}`);
          const payload = await this.reader.read(length);
          this.chunk(p, type, payload);
          if (flags & REPLY_FLAG_DONE) this.finish(this.take(handle));
        } else {
          throw new NbdError('EPROTO', `bad reply magic 0x${magic.toString(16)}`);
        }
      }
    } catch (err) {
      this.failAll(err instanceof NbdError ? err : new NbdError('EPROTO', (err as Error).message));
      this.sock.destroy();
    }
  }

  private take(handle: bigint): Pending {
    const p = this.pending.get(handle);
    if (!p) throw new NbdError('EPROTO', `reply for unknown handle ${handle}`);
    this.pending.delete(handle);
    return p;
  }

  private chunk(p: Pending, type: number, payload: Buffer): void {
    switch (type) {
      case REPLY_NONE:
        return;
      case REPLY_OFFSET_DATA: {
        const at = Number(payload.readBigUInt64BE(0)) - p.offset;
        if (p.type !== CMD_READ || at < 0 || at + payload.length - 8 > p.length) throw new NbdError('EPROTO', 'data chunk outside the read');
        payload.copy(p.data as Buffer, at, 8);
        return;
      }
      case REPLY_OFFSET_HOLE: {
        const at = Number(payload.readBigUInt64BE(0)) - p.offset;
        if (p.type !== CMD_READ || at < 0 || at + payload.readUInt32BE(8) > p.length) throw new NbdError('EPROTO', 'hole chunk outside the read');
        return; // the read buffer starts zeroed
      }
      case REPLY_BLOCK_STATUS: {
        const name = this.contexts.get(payload.readUInt32BE(0));
        if (!name || p.type !== CMD_BLOCK_STATUS) throw new NbdError('EPROTO', 'block status for an unknown context');
        const list: BlockStatusExtent[] = [];
        for (let at = 4; at + 8 <= payload.length; at += 8) list.push({ length: payload.readUInt32BE(at), flags: payload.readUInt32BE(at + 4) });
        if (!list.length || list.some((e) => e.length === 0)) throw new NbdError('EPROTO', 'empty block status extent');
        (p.status as Map<string, BlockStatusExtent[]>).set(name, list);
        return;
      }
      default:
        if (!(type & REPLY_ERROR_BIT) || payload.length < 6) throw new NbdError('EPROTO', `unknown reply chunk type ${type}`);
        p.error ??= serverError(payload.readUInt32BE(0), payload.subarray(6, 6 + payload.readUInt16BE(4)).toString('utf8'));
    }
  }

  private finish(p: Pending): void {
    if (p.error) p.reject(p.error);
    else p.resolve(p);
  }

  private failAll(err: Error): void {
    this.closed ??= err;
    this.reader.fail(err);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  private checkSpan(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.size) throw new NbdError('EINVAL', `request ${offset}+${length} is past the end of the export (${this.size} bytes)`);
  }

  /** Reads [offset, offset+length); lengths above the payload limit are split. */
  async read(offset: number, length: number): Promise<Buffer> {
    this.checkSpan(offset, length);
    if (length <= this.maxPayload) return length ? (await this.send(CMD_READ, 0, offset, length)).data as Buffer : Buffer.alloc(0);
    const parts: Promise<Buffer>[] = [];
    for (let at = 0; at < length; at += this.maxPayload) parts.push(this.read(offset + at, Math.min(this.maxPayload, length - at)));
    return Buffer.concat(await Promise.all(parts));
  }

  async write(offset: number, data: Buffer): Promise<void> {
    this.checkSpan(offset, data.length);
    const parts: Promise<Pending>[] = [];
    for (let at = 0; at < data.length; at += this.maxPayload) {
      const piece = data.subarray(at, Math.min(data.length, at + this.maxPayload));
      parts.push(this.send(CMD_WRITE, 0, offset + at, piece.length, piece));
    }
    await Promise.all(parts);
  }

  /** Makes a range read as zeros: NBD_CMD_WRITE_ZEROES (NO_HOLE unless `punch`), or written zeros without it. */
  async zero(offset: number, length: number, punch: boolean): Promise<void> {
    this.checkSpan(offset, length);
    if (!this.canWriteZeroes) {
      const zeros = Buffer.alloc(Math.min(length, 4 * 1024 * 1024));
      for (let at = 0; at < length; at += zeros.length) await this.write(offset + at, zeros.subarray(0, Math.min(zeros.length, length - at)));
      return;
    }
    for (let at = 0; at < length; at += MAX_SPAN) await this.send(CMD_WRITE_ZEROES, punch ? 0 : CMD_FLAG_NO_HOLE, offset + at, Math.min(MAX_SPAN, length - at));
  }

  async flush(): Promise<void> {
    if (this.canFlush) await this.send(CMD_FLUSH, 0, 0, 0);
  }

  /** One NBD_CMD_BLOCK_STATUS: the extents per selected context (they may cover less or more than asked). */
  async blockStatus(offset: number, length: number): Promise<Map<string, BlockStatusExtent[]>> {
    if (!this.contexts.size) throw new NbdError('ENOTSUP', 'the NBD server selected no metadata context');
    this.checkSpan(offset, length);
    return (await this.send(CMD_BLOCK_STATUS, 0, offset, Math.min(length, MAX_SPAN))).status as Map<string, BlockStatusExtent[]>;
  }

  /** Soft disconnect (NBD_CMD_DISC) once nothing is in flight. */
  async close(): Promise<void> {
    if (!this.closed && !this.sock.destroyed) {
      const h = Buffer.alloc(28);
      h.writeUInt32BE(REQUEST_MAGIC, 0);
      h.writeUInt16BE(CMD_DISC, 6);
      this.sock.end(h);
    }
    this.failAll(new NbdError('ESHUTDOWN', 'the NBD connection is closed'));
    await new Promise<void>((resolve) => {
      if (this.sock.destroyed) return resolve();
      this.sock.once('close', () => resolve());
      setTimeout(() => this.sock.destroy(), 1000).unref();
    });
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

function serverError(code: number, message: string): NbdError {
  const name = ERRNO[code] ?? 'EINVAL';
  return new NbdError(name, `the NBD server answered ${name}${message ? `: ${message}` : ''}`);
}

function optionError(option: string, type: number, data: Buffer, exportName: string): NbdError {
  const what: Record<number, string> = { 1: 'unsupported', 2: 'refused by policy', 3: 'invalid', 4: 'unsupported on this platform', 5: 'TLS required', 6: `no export named "${exportName}"`, 7: 'the server is shutting down', 8: 'block size negotiation required', 9: 'too big' };
  const text = data.toString('utf8');
  return new NbdError((type & ~REP_ERR_BIT) === 6 ? 'ENOENT' : 'EPROTO', `${option} failed: ${what[type & ~REP_ERR_BIT] ?? `error ${type & ~REP_ERR_BIT}`}${text ? ` (${text})` : ''}`);
}
