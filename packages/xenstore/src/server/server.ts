import * as net from 'node:net';
import { existsSync, statSync, unlinkSync } from 'node:fs';
import {
  XsType, XsMessage, XsPermission, MessageDecoder, encodeMessage, parsePerm, formatPerms,
  XENSTORE_PAYLOAD_MAX, XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX,
} from '../wire';
import { Store, TransactionView, NodeView, XsNode, parentOf, baseName, joinPath } from './store';

/**
 * Which daemon's error names to use where they differ: C xenstored answers
 * ENOSPC for an oversized node and for the entry quota (E2BIG for too many
 * watches); oxenstored answers E2BIG for an oversized value and EQUOTA for
 * its quotas.
 */
export type XenstoredDialect = 'xenstored' | 'oxenstored';

export interface XenstoreServerOptions {
  dialect?: XenstoredDialect;
  /**
   * Per-node limit for unprivileged domains (xenstored's default 2048). C
   * xenstored counts the node record (16-byte header, 8 bytes per permission,
   * value and child names); oxenstored counts the value only.
   */
  maxNodeSize?: number;
  /** Nodes a domain may own (default 1000). */
  maxEntries?: number;
  /** Watches per unprivileged connection (default 128). */
  maxWatches?: number;
  /** Open transactions per unprivileged connection (default 10). */
  maxTransactions?: number;
}

/** An error reply: `code` goes on the wire as is. */
class Fail extends Error {
  constructor(readonly code: string) {
    super(code);
  }
}

interface Watch {
  /** Canonical (absolute or @special) path. */
  path: string;
  token: string;
  /** Length of the prefix to strip from event paths ("/local/domain/N/") for a watch set with a relative path. */
  strip: number;
}

interface OpenTransaction {
  view: TransactionView;
  /** Watch events held back until the commit. */
  events: Array<{ path: string; exact: boolean }>;
}

interface Conn {
  domid: number;
  socket: net.Socket;
  decoder: MessageDecoder;
  watches: Watch[];
  transactions: Map<number, OpenTransaction>;
}

const NODE_HEADER_BYTES = 16;
const PERM_BYTES = 8;
const PRIVILEGED = new Set([XsType.INTRODUCE, XsType.RELEASE, XsType.IS_DOMAIN_INTRODUCED, XsType.RESUME, XsType.SET_TARGET, XsType.CONTROL]);

function isChildOf(child: string, parent: string): boolean {
  if (parent === '/') return child.startsWith('/');
  return child === parent || child.startsWith(`${parent}/`);
}

function nul(strs: readonly string[]): Buffer {
  return Buffer.from(strs.map((s) => `${s}\0`).join(''), 'latin1');
}

/** Strings of a payload; `exact` demands nothing after the last NUL (xenstored's onearg/get_strings). */
function args(payload: Buffer): { list: string[]; rest: number } {
  const list: string[] = [];
  let start = 0;
  for (let i = 0; i < payload.length; i++) {
    if (payload[i] === 0) {
      list.push(payload.toString('latin1', start, i));
      start = i + 1;
    }
  }
  return { list, rest: payload.length - start };
}

function oneArg(payload: Buffer): string {
  const a = args(payload);
  if (a.list.length !== 1 || a.rest !== 0) throw new Fail('EINVAL');
  return a.list[0];
}

/**
 * A xenstore daemon for tests, speaking the wire protocol of
 * docs/misc/xenstore.txt exactly: permissions, watches, transactions,
 * quotas. Connections on `listen()` sockets are dom0 (privileged);
 * connections on a `listenDomain()` socket act as that guest, as its
 * /dev/xen/xenbus would (unprivileged, relative paths under
 * /local/domain/<domid>).
 */
export class XenstoreServer {
  private readonly store = new Store();
  private readonly conns = new Set<Conn>();
  private readonly servers: Array<{ server: net.Server; path: string }> = [];
  private readonly introduced = new Set<number>();
  private nextTransaction = 1;
  private readonly dialect: XenstoredDialect;
  private readonly maxNodeSize: number;
  private readonly maxEntries: number;
  private readonly maxWatches: number;
  private readonly maxTransactions: number;

  constructor(options: XenstoreServerOptions = {}) {
    this.dialect = options.dialect ?? 'xenstored';
    this.maxNodeSize = options.maxNodeSize ?? 2048;
    this.maxEntries = options.maxEntries ?? 1000;
    this.maxWatches = options.maxWatches ?? 128;
    this.maxTransactions = options.maxTransactions ?? 10;
  }

  /** Serve dom0 (privileged) connections on a Unix socket, like /var/run/xenstored/socket. */
  listen(path: string): Promise<void> {
    return this.serve(path, 0);
  }

  /** Serve connections that act as guest `domid` (its xenbus device) on a Unix socket. */
  listenDomain(domid: number, path: string): Promise<void> {
    if (!Number.isInteger(domid) || domid <= 0 || domid > 65535) throw new Error(`bad guest domid ${domid} (1..65535)`);
    return this.serve(path, domid);
  }

  /**
   * What the toolstack does for a new guest: /local/domain/<domid> (owner
   * dom0, readable by the guest) with `domid`, `name` and a `data` directory
   * the guest owns; then @introduceDomain fires.
   */
  introduceDomain(domid: number, name = `guest${domid}`): void {
    const dom = `/local/domain/${domid}`;
    const empty = Buffer.alloc(0);
    const ro: XsPermission[] = [{ domid: 0, perm: 'n' }, { domid, perm: 'r' }];
    this.mkdirs(dom, [{ domid: 0, perm: 'n' }]);
    this.store.put(dom, { value: empty, perms: ro, children: this.store.get(dom)?.children ?? [] });
    this.addChildNode(dom, 'domid', Buffer.from(String(domid)), ro);
    this.addChildNode(dom, 'name', Buffer.from(name), ro);
    this.addChildNode(dom, 'data', empty, [{ domid, perm: 'n' }]);
    this.introduced.add(domid);
    this.fire(dom, false);
    this.fire('@introduceDomain', false);
  }

  /** The guest went away: its subtree is removed and @releaseDomain fires. */
  releaseDomain(domid: number): void {
    const dom = `/local/domain/${domid}`;
    if (this.store.get(dom)) this.removeTree(this.store, dom, (p, exact) => this.fire(p, exact));
    this.introduced.delete(domid);
    this.fire('@releaseDomain', false);
  }

  /** Inspect a node (tests). */
  node(path: string): { value: Buffer; perms: XsPermission[]; children: string[] } | undefined {
    const n = this.store.get(path);
    return n && { value: n.value, perms: [...n.perms], children: [...n.children] };
  }

  /** Nodes owned by a domain (its entry quota use). */
  entries(domid: number): number {
    return this.store.entries(domid);
  }

  /** Number of open client connections. */
  get connections(): number {
    return this.conns.size;
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.socket.destroy();
    this.conns.clear();
    await Promise.all(this.servers.map(({ server, path }) => new Promise<void>((resolve) => server.close(() => {
      try { unlinkSync(path); } catch { /* already gone */ }
      resolve();
    }))));
    this.servers.length = 0;
  }

  private serve(path: string, domid: number): Promise<void> {
    // A socket file left by a killed run would make listen() fail with EADDRINUSE.
    if (existsSync(path) && statSync(path).isSocket()) unlinkSync(path);
    const server = net.createServer((socket) => this.accept(socket, domid));
    this.servers.push({ server, path });
    return new Promise((resolve, reject) => {
      server.once('error', (err) => reject(new Error(`xenstore test server cannot listen on ${path}: ${err.message}`, { cause: err })));
      server.listen(path, () => resolve());
    });
  }

  private accept(socket: net.Socket, domid: number): void {
    const conn: Conn = { domid, socket, decoder: new MessageDecoder(), watches: [], transactions: new Map() };
    this.conns.add(conn);
    socket.on('data', (chunk: Buffer) => {
      let messages: XsMessage[];
      try {
        messages = conn.decoder.push(chunk);
      } catch {
        // xenstored stops talking to a client that breaks the payload limit.
        socket.destroy();
        return;
      }
      for (const m of messages) this.handle(conn, m);
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => this.conns.delete(conn));
  }

  private send(conn: Conn, m: XsMessage): void {
    if (!conn.socket.destroyed) conn.socket.write(encodeMessage(m));
  }

  private handle(conn: Conn, m: XsMessage): void {
    let reply: Buffer;
    try {
      reply = this.dispatch(conn, m);
    } catch (err) {
      if (!(err instanceof Fail)) throw err;
      this.send(conn, { type: XsType.ERROR, reqId: m.reqId, txId: m.txId, payload: nul([err.code]) });
      return;
    }
    if (reply.length > XENSTORE_PAYLOAD_MAX) {
      this.send(conn, { type: XsType.ERROR, reqId: m.reqId, txId: m.txId, payload: nul(['E2BIG']) });
      return;
    }
    this.send(conn, { type: m.type, reqId: m.reqId, txId: m.txId, payload: reply });
    // The event a new watch fires goes out right after its OK.
    if (m.type === XsType.WATCH) {
      const w = conn.watches[conn.watches.length - 1];
      this.sendEvent(conn, w, w.path);
    }
  }

  private dispatch(conn: Conn, m: XsMessage): Buffer {
    const type = m.type as XsType;
    if (PRIVILEGED.has(type) && conn.domid !== 0) throw new Fail('EACCES');
    let tx: OpenTransaction | undefined;
    if (m.txId !== 0 && type !== XsType.WATCH && type !== XsType.UNWATCH) {
      tx = conn.transactions.get(m.txId);
      if (!tx) throw new Fail('ENOENT');
    }
    const view: NodeView = tx?.view ?? this.store;
    const fire = tx ? (path: string, exact: boolean) => tx!.events.push({ path, exact }) : (path: string, exact: boolean) => this.fire(path, exact);
    const OK = nul(['OK']);
    switch (type) {
      case XsType.READ:
        return this.checked(conn, view, this.canonical(conn, oneArg(m.payload)), 'r').value;
      case XsType.DIRECTORY:
        return nul(this.checked(conn, view, this.canonical(conn, oneArg(m.payload)), 'r').children);
      case XsType.DIRECTORY_PART:
        return this.directoryPart(conn, view, m.payload);
      case XsType.GET_PERMS:
        return nul(formatPerms(this.checked(conn, view, this.canonical(conn, oneArg(m.payload), true), 'r').perms));
      case XsType.WRITE: {
        const nulAt = m.payload.indexOf(0);
        if (nulAt < 0) throw new Fail('EINVAL');
        const path = this.canonical(conn, m.payload.toString('latin1', 0, nulAt));
        this.write(conn, view, path, Buffer.from(m.payload.subarray(nulAt + 1)), fire);
        return OK;
      }
      case XsType.MKDIR: {
        const path = this.canonical(conn, oneArg(m.payload));
        if (!this.find(conn, view, path, 'w')) {
          this.create(conn, view, path, Buffer.alloc(0));
          fire(path, false);
        }
        return OK;
      }
      case XsType.RM:
        this.rm(conn, view, this.canonical(conn, oneArg(m.payload)), fire);
        return OK;
      case XsType.SET_PERMS:
        this.setPerms(conn, view, m.payload, fire);
        return OK;
      case XsType.WATCH:
        this.addWatch(conn, m.payload);
        return OK;
      case XsType.UNWATCH: {
        const a = args(m.payload);
        if (a.list.length !== 2) throw new Fail('EINVAL');
        const path = this.canonical(conn, a.list[0], true);
        const i = conn.watches.findIndex((w) => w.path === path && w.token === a.list[1]);
        if (i < 0) throw new Fail('ENOENT');
        conn.watches.splice(i, 1);
        return OK;
      }
      case XsType.TRANSACTION_START: {
        if (tx) throw new Fail('EBUSY');
        if (conn.domid !== 0 && conn.transactions.size >= this.maxTransactions) throw new Fail(this.dialect === 'xenstored' ? 'ENOSPC' : 'EQUOTA');
        const id = this.nextTransaction;
        this.nextTransaction = this.nextTransaction >= 0xfffffffe ? 1 : this.nextTransaction + 1;
        conn.transactions.set(id, { view: new TransactionView(this.store, id), events: [] });
        return nul([String(id)]);
      }
      case XsType.TRANSACTION_END: {
        if (!tx) throw new Fail('ENOENT');
        const arg = oneArg(m.payload);
        if (arg !== 'T' && arg !== 'F') throw new Fail('EINVAL');
        conn.transactions.delete(m.txId);
        if (arg === 'T') {
          if (!tx.view.commit()) throw new Fail('EAGAIN');
          for (const e of tx.events) this.fire(e.path, e.exact);
        }
        return OK;
      }
      case XsType.GET_DOMAIN_PATH:
        return nul([`/local/domain/${this.domidArg(oneArg(m.payload))}`]);
      case XsType.IS_DOMAIN_INTRODUCED: {
        const domid = this.domidArg(oneArg(m.payload));
        return nul([domid === 0 || this.introduced.has(domid) ? 'T' : 'F']);
      }
      case XsType.INTRODUCE: {
        const a = args(m.payload);
        if (a.list.length < 3) throw new Fail('EINVAL');
        const domid = this.domidArg(a.list[0]);
        if (domid === 0) throw new Fail('EINVAL');
        if (!this.introduced.has(domid)) {
          this.introduced.add(domid);
          this.fire('@introduceDomain', false);
        }
        return OK;
      }
      case XsType.RELEASE: {
        const domid = this.domidArg(oneArg(m.payload));
        if (!this.introduced.delete(domid)) throw new Fail('ENOENT');
        this.fire('@releaseDomain', false);
        return OK;
      }
      case XsType.RESET_WATCHES:
        conn.watches = [];
        conn.transactions.clear();
        return OK;
      default:
        // CONTROL, RESUME, SET_TARGET need a real hypervisor; replies and events are not requests.
        throw new Fail('ENOSYS');
    }
  }

  private domidArg(s: string): number {
    if (!/^\d{1,5}$/.test(s) || Number(s) > 65535) throw new Fail('EINVAL');
    return Number(s);
  }

  /** The absolute path a request means (relative paths are under the caller's /local/domain/<domid>). */
  private canonical(conn: Conn, raw: string, allowSpecial = false): string {
    if (raw === '' || !/^[A-Za-z0-9\-/_@]+$/.test(raw) || (raw[0] === '@' && !allowSpecial)) throw new Fail('EINVAL');
    const name = raw[0] === '/' || raw[0] === '@' ? raw : `/local/domain/${conn.domid}/${raw}`;
    if ((name.endsWith('/') && name !== '/') || name.includes('//')) throw new Fail('EINVAL');
    const local = /^\/local\/domain\/\d{1,5}\//.exec(name);
    const relLength = name.length - (local ? local[0].length : 0);
    if (name.length > XENSTORE_ABS_PATH_MAX || (conn.domid !== 0 && relLength > XENSTORE_REL_PATH_MAX)) throw new Fail('EINVAL');
    return name;
  }

  private access(conn: Conn, perms: readonly XsPermission[]): { r: boolean; w: boolean; owner: boolean } {
    if (conn.domid === 0 || perms[0].domid === conn.domid) return { r: true, w: true, owner: true };
    const p = (perms.slice(1).find((e) => e.domid === conn.domid) ?? perms[0]).perm;
    return { r: p === 'r' || p === 'b', w: p === 'w' || p === 'b', owner: false };
  }

  /**
   * The node if it exists and the caller has `need` on it; undefined if it
   * does not exist. EACCES when the caller lacks the right — also for a
   * missing node whose nearest existing ancestor would not grant it, so a
   * guest learns nothing about nodes it cannot see.
   */
  private find(conn: Conn, view: NodeView, path: string, need: 'r' | 'w' | 'owner'): XsNode | undefined {
    const node = view.get(path);
    if (node) {
      if (!this.access(conn, node.perms)[need]) throw new Fail('EACCES');
      return node;
    }
    if (path[0] === '@') throw new Fail('ENOENT');
    let p = path;
    let ancestor: XsNode | undefined;
    while (!ancestor && p !== '/') {
      p = parentOf(p);
      ancestor = view.get(p);
    }
    if (ancestor && !this.access(conn, ancestor.perms)[need === 'owner' ? 'w' : need]) throw new Fail('EACCES');
    return undefined;
  }

  private checked(conn: Conn, view: NodeView, path: string, need: 'r' | 'w' | 'owner'): XsNode {
    const node = this.find(conn, view, path, need);
    if (!node) throw new Fail('ENOENT');
    return node;
  }

  private checkSize(conn: Conn, node: Omit<XsNode, 'gen'>): void {
    if (conn.domid === 0) return;
    if (this.dialect === 'oxenstored') {
      if (node.value.length > this.maxNodeSize) throw new Fail('E2BIG');
      return;
    }
    const childBytes = node.children.reduce((n, c) => n + c.length + 1, 0);
    if (NODE_HEADER_BYTES + PERM_BYTES * node.perms.length + node.value.length + childBytes >= this.maxNodeSize) throw new Fail('ENOSPC');
  }

  private write(conn: Conn, view: NodeView, path: string, value: Buffer, fire: (p: string, exact: boolean) => void): void {
    const node = this.find(conn, view, path, 'w');
    if (node) {
      const next = { ...node, value };
      this.checkSize(conn, next);
      view.put(path, next);
    } else {
      this.create(conn, view, path, value);
    }
    fire(path, false);
  }

  /**
   * Create a node and any missing parents. New nodes inherit the parent's
   * permissions; a guest owns what it creates. All checks come before the
   * first change, so a refused request leaves the tree as it was.
   */
  private create(conn: Conn, view: NodeView, path: string, value: Buffer): void {
    const missing: string[] = [];
    let top = path;
    let ancestor: XsNode | undefined;
    while (!(ancestor = view.get(top))) {
      missing.unshift(top);
      top = parentOf(top);
    }
    if (conn.domid !== 0 && view.entries(conn.domid) + missing.length > this.maxEntries) {
      throw new Fail(this.dialect === 'xenstored' ? 'ENOSPC' : 'EQUOTA');
    }
    const perms: XsPermission[] = conn.domid !== 0 ? [{ domid: conn.domid, perm: ancestor.perms[0].perm }, ...ancestor.perms.slice(1)] : [...ancestor.perms];
    const empty = Buffer.alloc(0);
    const planned: Array<[string, Omit<XsNode, 'gen'>]> = [[top, { ...ancestor, children: [...ancestor.children, baseName(missing[0])] }]];
    missing.forEach((p, i) => {
      const last = i === missing.length - 1;
      planned.push([p, { value: last ? value : empty, perms, children: last ? [] : [baseName(missing[i + 1])] }]);
    });
    for (const [, n] of planned) this.checkSize(conn, n);
    for (const [p, n] of planned) view.put(p, n);
  }

  private rm(conn: Conn, view: NodeView, path: string, fire: (p: string, exact: boolean) => void): void {
    const node = this.find(conn, view, path, 'w');
    if (!node) {
      if (!view.get(parentOf(path))) throw new Fail('ENOENT');
      return;
    }
    if (path === '/') throw new Fail('EINVAL');
    this.removeTree(view, path, fire);
  }

  /** Remove a subtree, deepest first; watches on removed descendants fire with their own path. */
  private removeTree(view: NodeView, path: string, fire: (p: string, exact: boolean) => void): void {
    const walk = (p: string): void => {
      const n = view.get(p);
      if (!n) return;
      for (const c of n.children) walk(joinPath(p, c));
      fire(p, p !== path);
      view.del(p);
    };
    walk(path);
    const parentPath = parentOf(path);
    const parent = view.get(parentPath);
    if (parent) view.put(parentPath, { ...parent, children: parent.children.filter((c) => c !== baseName(path)) });
  }

  private setPerms(conn: Conn, view: NodeView, payload: Buffer, fire: (p: string, exact: boolean) => void): void {
    const a = args(payload);
    if (a.list.length < 2) throw new Fail('EINVAL');
    let perms: XsPermission[];
    try {
      perms = a.list.slice(1).map(parsePerm);
    } catch {
      throw new Fail('EINVAL');
    }
    const path = this.canonical(conn, a.list[0], true);
    const node = this.checked(conn, view, path, 'owner');
    if (conn.domid !== 0 && perms[0].domid !== node.perms[0].domid) throw new Fail('EPERM');
    const next = { ...node, perms };
    this.checkSize(conn, next);
    view.put(path, next);
    fire(path, false);
  }

  private directoryPart(conn: Conn, view: NodeView, payload: Buffer): Buffer {
    const a = args(payload);
    if (a.list.length !== 2) throw new Fail('EINVAL');
    const node = this.checked(conn, view, this.canonical(conn, a.list[0]), 'r');
    const offset = Number.parseInt(a.list[1], 10) || 0; // atoi()
    const gen = Buffer.from(`${node.gen}\0`, 'latin1');
    const children = nul(node.children);
    if (offset >= children.length) return Buffer.concat([gen, Buffer.alloc(1)]);
    // Whole names only, as many as fit; the final part carries an extra NUL.
    const max = XENSTORE_PAYLOAD_MAX - gen.length - 1;
    let end = offset;
    while (end < children.length) {
      const next = children.indexOf(0, end) + 1;
      if (next - offset - 1 >= max) break;
      end = next;
    }
    const last = end === children.length;
    return Buffer.concat([gen, children.subarray(offset, end), last ? Buffer.alloc(1) : Buffer.alloc(0)]);
  }

  private addWatch(conn: Conn, payload: Buffer): void {
    const a = args(payload);
    if (a.list.length !== 2) throw new Fail('EINVAL');
    const [raw, token] = a.list;
    const path = this.canonical(conn, raw, true);
    if (conn.watches.some((w) => w.path === path && w.token === token)) throw new Fail('EEXIST');
    if (conn.domid !== 0 && conn.watches.length >= this.maxWatches) throw new Fail(this.dialect === 'xenstored' ? 'E2BIG' : 'EQUOTA');
    const relative = raw[0] !== '/' && raw[0] !== '@';
    conn.watches.push({ path, token, strip: relative ? `/local/domain/${conn.domid}/`.length : 0 });
  }

  private sendEvent(conn: Conn, w: Watch, path: string): void {
    const payload = nul([path.slice(w.strip), w.token]);
    if (payload.length <= XENSTORE_PAYLOAD_MAX) this.send(conn, { type: XsType.WATCH_EVENT, reqId: 0, txId: 0, payload });
  }

  /**
   * A node changed: every watch on it or an ancestor fires (`exact`: only
   * watches on the node itself, used for descendants of a removed subtree).
   * A connection hears of it only if it may read the node or its parent.
   */
  private fire(path: string, exact: boolean): void {
    const node = this.store.get(path);
    const parent = path[0] === '/' && path !== '/' ? this.store.get(parentOf(path)) : undefined;
    for (const conn of this.conns) {
      const allowed = (node && this.access(conn, node.perms).r) || (parent && this.access(conn, parent.perms).r) || (!node && !parent);
      if (!allowed) continue;
      for (const w of conn.watches) {
        if (exact ? w.path === path : isChildOf(path, w.path)) this.sendEvent(conn, w, path);
      }
    }
  }

  private mkdirs(path: string, perms: XsPermission[]): void {
    const parts = path.split('/').filter(Boolean);
    let p = '/';
    for (const part of parts) {
      const child = joinPath(p, part);
      if (!this.store.get(child)) this.addChildNode(p, part, Buffer.alloc(0), perms);
      p = child;
    }
  }

  private addChildNode(dir: string, name: string, value: Buffer, perms: XsPermission[]): void {
    const parent = this.store.get(dir)!;
    const path = joinPath(dir, name);
    if (!parent.children.includes(name)) this.store.put(dir, { ...parent, children: [...parent.children, name] });
    this.store.put(path, { value, perms, children: this.store.get(path)?.children ?? [] });
  }
}
