// The xenstore wire protocol (xen/include/public/io/xs_wire.h, docs/misc/xenstore.txt):
// a 16-byte little-endian header {type, req_id, tx_id, len} and a payload of at most
// XENSTORE_PAYLOAD_MAX bytes, mostly NUL-terminated strings.

/** Message types, numbered as in `enum xsd_sockmsg_type`. */
export enum XsType {
  CONTROL = 0, // formerly DEBUG
  DIRECTORY = 1,
  READ = 2,
  GET_PERMS = 3,
  WATCH = 4,
  UNWATCH = 5,
  TRANSACTION_START = 6,
  TRANSACTION_END = 7,
  INTRODUCE = 8,
  RELEASE = 9,
  GET_DOMAIN_PATH = 10,
  WRITE = 11,
  MKDIR = 12,
  RM = 13,
  SET_PERMS = 14,
  WATCH_EVENT = 15,
  ERROR = 16,
  IS_DOMAIN_INTRODUCED = 17,
  RESUME = 18,
  SET_TARGET = 19,
  RESTRICT = 20,
  RESET_WATCHES = 21,
  DIRECTORY_PART = 22,
}

export const HEADER_SIZE = 16;
/** Largest payload in either direction; xenstored drops a connection that sends more. */
export const XENSTORE_PAYLOAD_MAX = 4096;
export const XENSTORE_ABS_PATH_MAX = 3072;
export const XENSTORE_REL_PATH_MAX = 2048;

/** The error names xenstored sends (xsd_errors in xs_wire.h, plus oxenstored's EQUOTA). */
export const XS_ERRORS: Readonly<Record<string, string>> = {
  EINVAL: 'invalid argument',
  EACCES: 'permission denied',
  EEXIST: 'already exists',
  EISDIR: 'is a directory',
  ENOENT: 'no such node',
  ENOMEM: 'out of memory',
  ENOSPC: 'quota or node size limit reached',
  EIO: 'input/output error',
  ENOTEMPTY: 'not empty',
  ENOSYS: 'operation not supported',
  EROFS: 'read-only',
  EBUSY: 'busy',
  EAGAIN: 'transaction conflict, try again',
  EISCONN: 'already connected',
  E2BIG: 'too big',
  EPERM: 'operation not permitted',
  EQUOTA: 'quota exceeded',
};

export interface XsMessage {
  type: number;
  reqId: number;
  txId: number;
  payload: Buffer;
}

/** An error reply from xenstore (code is the string the daemon sent, e.g. "ENOENT"). */
export class XenstoreError extends Error {
  constructor(readonly code: string, readonly op: string, readonly path?: string) {
    super(`xenstore ${op}${path !== undefined ? ` ${path}` : ''}: ${code} (${XS_ERRORS[code] ?? 'unknown error'})`);
    this.name = 'XenstoreError';
  }
}

export function encodeMessage(m: XsMessage): Buffer {
  const out = Buffer.allocUnsafe(HEADER_SIZE + m.payload.length);
  out.writeUInt32LE(m.type >>> 0, 0);
  out.writeUInt32LE(m.reqId >>> 0, 4);
  out.writeUInt32LE(m.txId >>> 0, 8);
  out.writeUInt32LE(m.payload.length, 12);
  m.payload.copy(out, HEADER_SIZE);
  return out;
}

/** Payload of NUL-terminated strings, optionally followed by raw bytes (WRITE's value). */
export function strings(parts: readonly string[], tail?: Buffer): Buffer {
  const bufs: Buffer[] = [];
  for (const p of parts) bufs.push(Buffer.from(p, 'utf8'), Buffer.alloc(1));
  if (tail) bufs.push(tail);
  return Buffer.concat(bufs);
}

/** Split a payload at NULs; a trailing NUL does not start another string. */
export function splitStrings(payload: Buffer): string[] {
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < payload.length; i++) {
    if (payload[i] === 0) {
      out.push(payload.toString('utf8', start, i));
      start = i + 1;
    }
  }
  if (start < payload.length) out.push(payload.toString('utf8', start));
  return out;
}

/**
 * Cuts a byte stream into messages. Rejects a header whose length is over the
 * payload limit (the peer is broken; allocating for it would be the bug).
 */
export class MessageDecoder {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): XsMessage[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: XsMessage[] = [];
    while (this.buf.length >= HEADER_SIZE) {
      const len = this.buf.readUInt32LE(12);
      if (len > XENSTORE_PAYLOAD_MAX) {
        throw new Error(`xenstore message of ${len} bytes is over the ${XENSTORE_PAYLOAD_MAX}-byte limit`);
      }
      if (this.buf.length < HEADER_SIZE + len) break;
      out.push({
        type: this.buf.readUInt32LE(0),
        reqId: this.buf.readUInt32LE(4),
        txId: this.buf.readUInt32LE(8),
        payload: Buffer.from(this.buf.subarray(HEADER_SIZE, HEADER_SIZE + len)),
      });
      this.buf = this.buf.subarray(HEADER_SIZE + len);
    }
    return out;
  }
}

/** One entry of a node's permission list: n(one), r(ead), w(rite) or b(oth) for a domain. */
export interface XsPermission {
  domid: number;
  perm: 'n' | 'r' | 'w' | 'b';
}

/** The first entry names the owner and the access of every domain not listed after it. */
export function formatPerms(perms: readonly XsPermission[]): string[] {
  return perms.map((p) => `${p.perm}${p.domid}`);
}

export function parsePerm(s: string): XsPermission {
  const m = /^([nrwb])(\d{1,5})$/.exec(s);
  if (!m || Number(m[2]) > 65535) throw new Error(`bad xenstore permission "${s}" (want n|r|w|b followed by a domid)`);
  return { perm: m[1] as XsPermission['perm'], domid: Number(m[2]) };
}

const PATH_CHARS = /^[A-Za-z0-9\-/_@]+$/;

/** Is this a path xenstored accepts (docs/misc/xenstore.txt "Paths")? Relative paths allowed. */
export function isValidPath(path: string): boolean {
  if (!PATH_CHARS.test(path)) return false;
  if (path === '/') return true;
  return !path.endsWith('/') && !path.includes('//');
}
