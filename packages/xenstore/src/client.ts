import { EventEmitter } from 'node:events';
import { statSync } from 'node:fs';
import {
  XsType, XsMessage, XsPermission, XenstoreError, MessageDecoder, XENSTORE_PAYLOAD_MAX,
  encodeMessage, strings, splitStrings, formatPerms, parsePerm, isValidPath,
} from './wire';
import { XsTransport, connectSocket, openDevice, DEFAULT_XENSTORED_SOCKET, DEFAULT_XENBUS_DEVICE } from './transport';

type Value = string | Buffer;

/**
 * The data operations, shared by the client (outside any transaction) and a
 * transaction (every request carries its tx_id).
 */
export abstract class XenstoreOps {
  protected abstract call(type: XsType, payload: Buffer, op: string, path?: string): Promise<Buffer>;

  async read(path: string): Promise<Buffer> {
    return this.call(XsType.READ, strings([checkPath(path, 'read')]), 'read', path);
  }

  async readString(path: string): Promise<string> {
    return (await this.read(path)).toString('utf8');
  }

  /** The value, or undefined when the node does not exist. */
  async tryRead(path: string): Promise<Buffer | undefined> {
    try {
      return await this.read(path);
    } catch (err) {
      if (err instanceof XenstoreError && err.code === 'ENOENT') return undefined;
      throw err;
    }
  }

  async exists(path: string): Promise<boolean> {
    return (await this.tryRead(path)) !== undefined;
  }

  /** Write a value; missing parents are created with empty values. */
  async write(path: string, value: Value): Promise<void> {
    const v = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
    await this.call(XsType.WRITE, strings([checkPath(path, 'write')], v), 'write', path);
  }

  async mkdir(path: string): Promise<void> {
    await this.call(XsType.MKDIR, strings([checkPath(path, 'mkdir')]), 'mkdir', path);
  }

  /** Remove a node and its subtree; not an error when it is already gone (but its parent must exist). */
  async rm(path: string): Promise<void> {
    await this.call(XsType.RM, strings([checkPath(path, 'rm')]), 'rm', path);
  }

  /** Names of the children. A listing too long for one reply is fetched with DIRECTORY_PART. */
  async directory(path: string): Promise<string[]> {
    checkPath(path, 'directory');
    try {
      return splitStrings(await this.call(XsType.DIRECTORY, strings([path]), 'directory', path));
    } catch (err) {
      if (!(err instanceof XenstoreError) || err.code !== 'E2BIG') throw err;
    }
    return this.directoryParts(path);
  }

  /** DIRECTORY_PART from offset 0 to the end, restarting if the node changes in between (its generation moves). */
  async directoryParts(path: string): Promise<string[]> {
    for (let attempt = 0; attempt < 16; attempt++) {
      let gen: string | undefined;
      const names: string[] = [];
      let offset = 0;
      let restart = false;
      for (;;) {
        const reply = await this.call(XsType.DIRECTORY_PART, strings([path, String(offset)]), 'directory-part', path);
        const nul = reply.indexOf(0);
        if (nul < 0) throw new XenstoreError('EINVAL', 'directory-part (malformed reply)', path);
        const g = reply.toString('latin1', 0, nul);
        if (gen === undefined) gen = g;
        else if (g !== gen) {
          restart = true;
          break;
        }
        const rest = reply.subarray(nul + 1);
        // The last part ends with an empty string: one more NUL after the last name's.
        const last = rest.length === 1 ? rest[0] === 0 : rest.length >= 2 && rest[rest.length - 1] === 0 && rest[rest.length - 2] === 0;
        names.push(...splitStrings(last ? rest.subarray(0, rest.length - 1) : rest));
        if (last) return names;
        if (rest.length === 0) throw new XenstoreError('EINVAL', 'directory-part (empty reply)', path);
        offset += rest.length;
      }
      if (!restart) break;
    }
    throw new XenstoreError('EAGAIN', 'directory-part (the listing kept changing)', path);
  }

  async getPerms(path: string): Promise<XsPermission[]> {
    const reply = await this.call(XsType.GET_PERMS, strings([checkPath(path, 'get-perms')]), 'get-perms', path);
    return splitStrings(reply).map(parsePerm);
  }

  /** The first entry is the owner (and the access of domains not listed); dom0 always has full access. */
  async setPerms(path: string, perms: readonly XsPermission[]): Promise<void> {
    if (perms.length === 0) throw new Error(`xenstore set-perms ${path}: at least the owner entry is needed`);
    for (const p of perms) parsePerm(`${p.perm}${p.domid}`);
    await this.call(XsType.SET_PERMS, strings([checkPath(path, 'set-perms'), ...formatPerms(perms)]), 'set-perms', path);
  }
}

function checkPath(path: string, op: string): string {
  if (!isValidPath(path)) throw new XenstoreError('EINVAL', `${op} (bad path: only A-Z a-z 0-9 - / _ @, no // or trailing /)`, JSON.stringify(path));
  return path;
}

/** Operations inside one transaction; see XenstoreClient.transaction(). */
export class XenstoreTransaction extends XenstoreOps {
  constructor(private readonly client: XenstoreClient, readonly id: number) {
    super();
  }

  protected call(type: XsType, payload: Buffer, op: string, path?: string): Promise<Buffer> {
    return this.client.request(type, payload, this.id, op, path);
  }
}

/**
 * One watch. Give a listener to `XenstoreClient.watch` to get events as they
 * come; without one they are queued (each distinct path once until taken) for
 * `for await (const path of watch)`. The first event is the one xenstored
 * fires when the watch is set up, with the watched path itself.
 */
export class XenstoreWatch {
  private queue: string[] = [];
  private queued = new Set<string>();
  private waiter?: { resolve: (r: IteratorResult<string>) => void; reject: (e: Error) => void };
  private ended = false;
  private endError?: Error;

  constructor(
    private readonly client: XenstoreClient,
    readonly path: string,
    readonly token: string,
    private readonly listener?: (path: string) => void,
  ) {}

  /** @internal */
  deliver(path: string): void {
    if (this.listener) {
      this.listener(path);
      return;
    }
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: path, done: false });
      return;
    }
    if (this.queued.has(path)) return;
    this.queued.add(path);
    this.queue.push(path);
  }

  /** @internal */
  end(error?: Error): void {
    if (this.ended) return;
    this.ended = true;
    this.endError = error;
    const w = this.waiter;
    this.waiter = undefined;
    if (w) error ? w.reject(error) : w.resolve({ value: undefined, done: true });
  }

  /** Stop watching (UNWATCH); the iterator ends. */
  async close(): Promise<void> {
    if (this.ended) return;
    this.end();
    await this.client.unwatchToken(this);
  }

  [Symbol.asyncIterator](): AsyncIterator<string> {
    return {
      next: () => {
        const path = this.queue.shift();
        if (path !== undefined) {
          this.queued.delete(path);
          return Promise.resolve({ value: path, done: false });
        }
        if (this.ended) return this.endError ? Promise.reject(this.endError) : Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
      },
      return: async () => {
        await this.close();
        return { value: undefined, done: true };
      },
    };
  }
}

export interface XenstoreConnectOptions {
  /** Unix socket of xenstored (dom0). Default: $XENSTORED_PATH or /var/run/xenstored/socket. */
  socketPath?: string;
  /** The guest's xenbus device (relative paths then resolve against /local/domain/<domid>). */
  devicePath?: string;
}

interface Pending {
  resolve: (payload: Buffer) => void;
  reject: (err: Error) => void;
  op: string;
  path?: string;
  type: XsType;
}

/**
 * A xenstore client: many requests may be outstanding; replies are matched by
 * req_id. Emits 'close' (error?) when the connection ends.
 */
export class XenstoreClient extends XenstoreOps {
  private readonly events = new EventEmitter();
  private readonly pending = new Map<number, Pending>();
  private readonly watches = new Map<string, XenstoreWatch>();
  private readonly decoder = new MessageDecoder();
  private nextReqId = 1;
  private nextToken = 1;
  private closedError?: Error;
  private isClosed = false;
  private closing = false;

  constructor(private readonly transport: XsTransport) {
    super();
    transport.on('data', (chunk: Buffer) => this.onData(chunk));
    transport.on('close', (error?: Error) => this.finish(error));
  }

  get description(): string {
    return this.transport.description;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /**
   * Connect: to the guest device when `devicePath` is given, else to the
   * socket (`socketPath`, $XENSTORED_PATH, /var/run/xenstored/socket).
   */
  static async connect(options: XenstoreConnectOptions = {}): Promise<XenstoreClient> {
    const transport = options.devicePath
      ? await openDevice(options.devicePath)
      : await connectSocket(options.socketPath ?? process.env.XENSTORED_PATH ?? DEFAULT_XENSTORED_SOCKET);
    return new XenstoreClient(transport);
  }

  /**
   * Connect as the guest: the xenbus device (default /dev/xen/xenbus), or,
   * when `path` is a Unix socket, a xenstored socket that serves this guest's
   * view (the test server's listenDomain, a stand-in for the device).
   */
  static connectGuest(path = DEFAULT_XENBUS_DEVICE): Promise<XenstoreClient> {
    let socket = false;
    try {
      socket = statSync(path).isSocket();
    } catch {
      // missing: openDevice names the cause
    }
    return XenstoreClient.connect(socket ? { socketPath: path } : { devicePath: path });
  }

  /** Called once when the connection ends (at once if it already has). */
  onClose(listener: (error?: Error) => void): void {
    if (this.isClosed) queueMicrotask(() => listener(this.closedError));
    else this.events.once('close', listener);
  }

  private finish(error?: Error): void {
    if (this.isClosed) return;
    this.isClosed = true;
    // Only close() ends the connection quietly; anything else is an error for whoever waits on it.
    const cause = this.closing ? error : (error ?? new Error('the other end closed the connection'));
    this.closedError = new Error(`xenstore connection ${this.description} closed${cause ? `: ${cause.message}` : ''}`, { cause });
    for (const p of this.pending.values()) p.reject(this.closedError);
    this.pending.clear();
    for (const w of this.watches.values()) w.end(cause ? this.closedError : undefined);
    this.watches.clear();
    this.events.emit('close', cause);
  }

  close(): void {
    this.closing = true;
    this.transport.close();
    this.finish();
  }

  /** Low level: send one request and resolve with the reply payload (an ERROR reply rejects). */
  request(type: XsType, payload: Buffer, txId: number, op: string, path?: string): Promise<Buffer> {
    if (this.isClosed) return Promise.reject(this.closedError);
    // xenstored drops a connection that sends more; refuse here instead.
    if (payload.length > XENSTORE_PAYLOAD_MAX) return Promise.reject(new XenstoreError('E2BIG', `${op} (request of ${payload.length} bytes)`, path));
    const reqId = this.nextReqId;
    this.nextReqId = this.nextReqId >= 0xffffffff ? 1 : this.nextReqId + 1;
    return new Promise((resolve, reject) => {
      this.pending.set(reqId, { resolve, reject, op, path, type });
      this.transport.write(encodeMessage({ type, reqId, txId, payload }));
    });
  }

  protected call(type: XsType, payload: Buffer, op: string, path?: string): Promise<Buffer> {
    return this.request(type, payload, 0, op, path);
  }

  private onData(chunk: Buffer): void {
    let messages: XsMessage[];
    try {
      messages = this.decoder.push(chunk);
    } catch (err) {
      this.finish(err as Error);
      this.transport.close();
      return;
    }
    for (const m of messages) this.dispatch(m);
  }

  private dispatch(m: XsMessage): void {
    if (m.type === XsType.WATCH_EVENT) {
      const [path, token] = splitStrings(m.payload);
      if (path !== undefined && token !== undefined) this.watches.get(token)?.deliver(path);
      return;
    }
    const p = this.pending.get(m.reqId);
    if (!p) return; // a reply nobody waits for (a broken peer): nothing to match it to
    this.pending.delete(m.reqId);
    if (m.type === XsType.ERROR) p.reject(new XenstoreError(splitStrings(m.payload)[0] ?? 'EINVAL', p.op, p.path));
    else if (m.type !== p.type) p.reject(new XenstoreError('EINVAL', `${p.op} (reply of type ${m.type})`, p.path));
    else p.resolve(m.payload);
  }

  /**
   * Watch a path and its descendants (or a special "@introduceDomain" /
   * "@releaseDomain"). With a listener, events go to it; otherwise iterate
   * the returned watch.
   */
  async watch(path: string, listener?: (path: string) => void): Promise<XenstoreWatch> {
    checkPath(path, 'watch');
    const token = `porthole-${this.nextToken++}`;
    const w = new XenstoreWatch(this, path, token, listener);
    // Registered before the request: the event fired on registration follows the reply at once.
    this.watches.set(token, w);
    try {
      await this.call(XsType.WATCH, strings([path, token]), 'watch', path);
    } catch (err) {
      this.watches.delete(token);
      throw err;
    }
    return w;
  }

  /** @internal */
  async unwatchToken(w: XenstoreWatch): Promise<void> {
    if (!this.watches.delete(w.token) || this.isClosed) return;
    await this.call(XsType.UNWATCH, strings([w.path, w.token]), 'unwatch', w.path);
  }

  /**
   * Yields each child name of `dir` as it appears (those present at the start
   * first). A name that disappears and comes back is yielded again. The
   * directory need not exist yet.
   */
  async *watchChildren(dir: string): AsyncGenerator<string, void, undefined> {
    const w = await this.watch(dir);
    const seen = new Set<string>();
    try {
      for await (const _ of w) {
        void _;
        let names: string[];
        try {
          names = await this.directory(dir);
        } catch (err) {
          if (err instanceof XenstoreError && err.code === 'ENOENT') names = [];
          else throw err;
        }
        const now = new Set(names);
        for (const s of seen) if (!now.has(s)) seen.delete(s);
        for (const n of names) {
          if (seen.has(n)) continue;
          seen.add(n);
          yield n;
        }
      }
    } finally {
      await w.close().catch(() => undefined);
    }
  }

  async transactionStart(): Promise<XenstoreTransaction> {
    const reply = await this.call(XsType.TRANSACTION_START, strings(['']), 'transaction-start');
    const id = Number(splitStrings(reply)[0]);
    if (!Number.isInteger(id) || id <= 0) throw new XenstoreError('EINVAL', 'transaction-start (bad id in reply)');
    return new XenstoreTransaction(this, id);
  }

  /** Commit (true) or abort (false). A conflicting commit rejects with code EAGAIN. */
  async transactionEnd(tx: XenstoreTransaction, commit: boolean): Promise<void> {
    await this.request(XsType.TRANSACTION_END, strings([commit ? 'T' : 'F']), tx.id, 'transaction-end');
  }

  /**
   * Run `fn` in a transaction and commit; on EAGAIN (another writer touched
   * the same nodes) run it again, up to `attempts` times. If `fn` throws, the
   * transaction is aborted and the error passed on.
   */
  async transaction<T>(fn: (tx: XenstoreTransaction) => Promise<T>, attempts = 16): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const tx = await this.transactionStart();
      let result: T;
      try {
        result = await fn(tx);
      } catch (err) {
        await this.transactionEnd(tx, false).catch(() => undefined);
        throw err;
      }
      try {
        await this.transactionEnd(tx, true);
        return result;
      } catch (err) {
        if (!(err instanceof XenstoreError) || err.code !== 'EAGAIN' || attempt >= attempts) throw err;
      }
    }
  }

  /** "/local/domain/<domid>" as xenstored reports it. */
  async getDomainPath(domid: number): Promise<string> {
    const reply = await this.call(XsType.GET_DOMAIN_PATH, strings([String(domid)]), 'get-domain-path');
    return splitStrings(reply)[0] ?? '';
  }
}
