import { Channel, ChannelBase, Connector } from '@porthole/transport';
import { XenstoreClient } from './client';
import { XenstoreError, XsPermission } from './wire';
import { DEFAULT_XENBUS_DEVICE } from './transport';

/**
 * Packets over xenstore. Each direction is a directory of numbered keys
 * (`<base>/to-guest/<seq>`, `<base>/to-host/<seq>`); a packet is cut into
 * parts, one key each, valued `<index>/<count>:<base64>`. The writer numbers
 * keys in order, the reader takes them in numeric order (woken by a watch,
 * never polling) and deletes what it read. At most `window` keys of one
 * direction exist at a time, so the store's quotas are never exceeded.
 */

/** Under the guest's /local/domain/<domid>. */
export const XENSTORE_CHANNEL_BASE = 'data/porthole';
/** Longest value written (C xenstored counts header + permissions + value against its 2048-byte node limit). */
export const DEFAULT_VALUE_SIZE = 1800;
/** Keys one direction may have outstanding. Both directions stay well inside xenstored's 1000-entry domain quota. */
export const DEFAULT_WINDOW = 128;
export const DEFAULT_MAX_PACKET_SIZE = 8 * 1024 * 1024;
/** Room kept in each value for the `<index>/<count>:` header. */
const HEADER_ROOM = 24;

export interface XenstoreChannelOptions {
  /** Directory the channel writes its keys into. */
  outDir: string;
  /** Directory the peer writes into. */
  inDir: string;
  description: string;
  window?: number;
  valueSize?: number;
  maxPacketSize?: number;
}

/** Run `fn` when triggered; triggers during a run cause exactly one more run. */
function serialized(fn: () => Promise<void>, onError: (err: Error) => void): () => void {
  let running = false;
  let again = false;
  const run = (): void => {
    if (running) {
      again = true;
      return;
    }
    running = true;
    again = false;
    fn().then(
      () => {
        running = false;
        if (again) run();
      },
      (err: Error) => {
        running = false;
        onError(err);
      },
    );
  };
  return run;
}

/** A key number as a writer makes it: decimal, no leading zero ("7", never "0007"), within 15 digits. */
const KEY_NUMBER = /^(0|[1-9]\d{0,14})$/;

/** Child names that are key numbers, ascending (xenstored lists children in creation order). */
function seqs(names: readonly string[]): number[] {
  return names.filter((n) => KEY_NUMBER.test(n)).map(Number).sort((a, b) => a - b);
}

async function listOrEmpty(client: XenstoreClient, dir: string): Promise<string[]> {
  try {
    return await client.directory(dir);
  } catch (err) {
    if (err instanceof XenstoreError && err.code === 'ENOENT') return [];
    throw err;
  }
}

export class XenstoreChannel extends ChannelBase {
  readonly kind = 'packets' as const;
  readonly description: string;
  override readonly maxPacketSize: number;
  private readonly window: number;
  private readonly partBytes: number;
  private readonly outDir: string;
  private readonly inDir: string;

  /** Parts waiting for room in the window. */
  private queue: Array<{ value: string }> = [];
  /** Keys written and not yet seen consumed. */
  private readonly outstanding = new Set<number>();
  private nextSeq = 0;
  private needDrain = false;

  /** Keys read whose removal has not completed (skipped by later listings). */
  private readonly taken = new Set<number>();
  /** Names in the inbound directory that are no key number, being removed. */
  private readonly strays = new Set<string>();
  private partial: { count: number; next: number; parts: Buffer[]; bytes: number } | undefined;
  /** Reading starts once the opener has had a chance to attach its 'data' listener. */
  private reading = false;
  /** Keys are left unread while paused: the writer's window then holds it back. */
  private paused = false;

  private readonly refreshOut: () => void;
  private readonly refreshIn: () => void;

  private constructor(private readonly client: XenstoreClient, options: XenstoreChannelOptions) {
    super();
    this.description = options.description;
    this.outDir = options.outDir;
    this.inDir = options.inDir;
    this.window = options.window ?? DEFAULT_WINDOW;
    this.maxPacketSize = options.maxPacketSize ?? DEFAULT_MAX_PACKET_SIZE;
    const valueSize = options.valueSize ?? DEFAULT_VALUE_SIZE;
    if (valueSize < HEADER_ROOM + 4) throw new Error(`xenstore channel value size ${valueSize} is too small`);
    this.partBytes = Math.floor((valueSize - HEADER_ROOM) / 4) * 3;
    const fail = (err: Error) => this.fail(err);
    this.refreshOut = serialized(() => this.collectConsumed(), fail);
    this.refreshIn = serialized(() => this.readIncoming(), fail);
    client.onClose((err) => this.markClosed(err && new Error(`${this.description}: ${err.message}`, { cause: err })));
  }

  /** Open a channel on a connected client (which it then owns): creates the directories, sets up both watches. */
  static async open(client: XenstoreClient, options: XenstoreChannelOptions): Promise<XenstoreChannel> {
    const ch = new XenstoreChannel(client, options);
    try {
      await client.mkdir(options.outDir);
      await client.mkdir(options.inDir);
      // Continue numbering after keys a previous writer left unread.
      const left = seqs(await client.directory(options.outDir));
      ch.nextSeq = left.length ? left[left.length - 1] + 1 : 0;
      for (const s of left) ch.outstanding.add(s);
      await client.watch(options.outDir, () => ch.refreshOut());
      await client.watch(options.inDir, () => ch.reading && ch.refreshIn());
    } catch (err) {
      client.close();
      throw new Error(`${options.description}: cannot open the xenstore channel: ${(err as Error).message}`, { cause: err });
    }
    setImmediate(() => {
      ch.reading = true;
      ch.refreshIn();
    });
    return ch;
  }

  write(data: Buffer): boolean {
    if (this.closed) return false;
    if (data.length > this.maxPacketSize) throw new Error(`${this.description}: packet of ${data.length} bytes is over the ${this.maxPacketSize}-byte limit`);
    const count = Math.max(1, Math.ceil(data.length / this.partBytes));
    for (let i = 0; i < count; i++) {
      const part = data.subarray(i * this.partBytes, (i + 1) * this.partBytes);
      this.queue.push({ value: `${i}/${count}:${part.toString('base64')}` });
    }
    this.pump();
    if (this.queue.length === 0) return true;
    this.needDrain = true;
    return false;
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    if (this.reading) this.refreshIn();
  }

  close(): void {
    if (this.closed) return;
    this.markClosed();
    this.client.close();
  }

  private fail(err: Error): void {
    if (this.closed) return;
    this.markClosed(new Error(`${this.description}: ${err.message}`, { cause: err }));
    this.client.close();
  }

  private pump(): void {
    while (this.queue.length && this.outstanding.size < this.window && !this.closed) {
      const { value } = this.queue.shift()!;
      const seq = this.nextSeq++;
      this.outstanding.add(seq);
      // Pipelined: xenstored applies one connection's requests in order, so keys appear in sequence.
      this.client.write(`${this.outDir}/${seq}`, value).catch((err: Error) => this.fail(err));
    }
    if (this.needDrain && this.queue.length === 0 && !this.closed) {
      this.needDrain = false;
      this.emit('drain');
    }
  }

  /** Something changed in our out-directory: keys we wrote that are gone were consumed. */
  private async collectConsumed(): Promise<void> {
    // Only keys whose write went out before this listing can be judged by it.
    const judged = [...this.outstanding];
    const present = new Set(await listOrEmpty(this.client, this.outDir));
    for (const s of judged) if (!present.has(String(s))) this.outstanding.delete(s);
    this.pump();
  }

  /** Read new keys in order, hand complete packets on, delete what was read. */
  private async readIncoming(): Promise<void> {
    if (this.paused) return;
    const names = await listOrEmpty(this.client, this.inDir);
    // Anything else a writer left there belongs to no packet: read as one ("0007" as 7) it would stay for ever.
    for (const name of names) {
      if (KEY_NUMBER.test(name) || this.strays.has(name)) continue;
      this.strays.add(name);
      this.client.rm(`${this.inDir}/${name}`).catch(() => undefined).finally(() => this.strays.delete(name));
    }
    const fresh = seqs(names).filter((s) => !this.taken.has(s));
    if (!fresh.length) return;
    for (const s of fresh) this.taken.add(s);
    const values = await Promise.all(fresh.map((s) => this.client.tryRead(`${this.inDir}/${s}`)));
    for (let i = 0; i < fresh.length; i++) {
      const s = fresh[i];
      this.client.rm(`${this.inDir}/${s}`).then(() => this.taken.delete(s), (err: Error) => this.fail(err));
      const v = values[i];
      if (v !== undefined) this.accept(v.toString('latin1'));
      if (this.closed) return;
    }
  }

  /** One part. A part out of sequence (a writer that restarted mid-packet) drops the packet it belonged to. */
  private accept(value: string): void {
    const m = /^(\d{1,9})\/(\d{1,9}):([A-Za-z0-9+/=]*)$/.exec(value);
    if (!m) return;
    const index = Number(m[1]);
    const count = Number(m[2]);
    if (count < 1 || index >= count) return;
    if (index === 0) this.partial = { count, next: 0, parts: [], bytes: 0 };
    const p = this.partial;
    if (!p || p.count !== count || p.next !== index) {
      this.partial = undefined;
      return;
    }
    const bytes = Buffer.from(m[3], 'base64');
    p.bytes += bytes.length;
    if (p.bytes > this.maxPacketSize) {
      this.partial = undefined;
      return;
    }
    p.parts.push(bytes);
    p.next++;
    if (p.next === count) {
      this.partial = undefined;
      this.emit('data', p.parts.length === 1 ? p.parts[0] : Buffer.concat(p.parts));
    }
  }
}

export interface XenstoreChannelTuning {
  window?: number;
  valueSize?: number;
  maxPacketSize?: number;
}

/** Opens XenstoreChannels with a fresh client each time. */
class XenstoreConnector implements Connector {
  constructor(
    readonly description: string,
    private readonly open: () => Promise<XenstoreClient>,
    private readonly options: Omit<XenstoreChannelOptions, 'description'>,
  ) {}

  async connect(signal?: AbortSignal): Promise<Channel> {
    signal?.throwIfAborted();
    const client = await this.open();
    if (signal?.aborted) {
      client.close();
      throw signal.reason;
    }
    return XenstoreChannel.open(client, { ...this.options, description: this.description });
  }
}

/**
 * The host (dom0) side for guest `domid`: connects to xenstored's socket
 * (`socketPath`, $XENSTORED_PATH, /var/run/xenstored/socket), creates
 * /local/domain/<domid>/data/porthole/{to-guest,to-host} readable and
 * writable by dom0 and that guest only.
 */
export function connectXenstoreHost(domid: number, options: XenstoreChannelTuning & { socketPath?: string } = {}): Connector {
  if (!Number.isInteger(domid) || domid <= 0 || domid > 65535) throw new Error(`bad guest domid ${domid} (1..65535)`);
  const base = `/local/domain/${domid}/${XENSTORE_CHANNEL_BASE}`;
  const perms: XsPermission[] = [{ domid: 0, perm: 'n' }, { domid, perm: 'b' }];
  return new XenstoreConnector(
    `xen:${domid}`,
    async () => {
      const client = await XenstoreClient.connect({ socketPath: options.socketPath });
      try {
        for (const dir of [base, `${base}/to-guest`, `${base}/to-host`]) {
          await client.mkdir(dir);
          await client.setPerms(dir, perms);
        }
      } catch (err) {
        client.close();
        throw new Error(`xen:${domid}: cannot prepare ${base}: ${(err as Error).message}`, { cause: err });
      }
      return client;
    },
    { ...options, outDir: `${base}/to-guest`, inDir: `${base}/to-host` },
  );
}

/**
 * The guest side: `path` is the xenbus device (default /dev/xen/xenbus) or a
 * Unix socket that acts as this guest (a test xenstored). Paths are relative
 * to the guest's own /local/domain/<domid>.
 */
export function connectXenstoreGuest(options: XenstoreChannelTuning & { path?: string } = {}): Connector {
  const path = options.path ?? DEFAULT_XENBUS_DEVICE;
  return new XenstoreConnector(`xen-guest:${path}`, () => XenstoreClient.connectGuest(path), {
    ...options,
    outDir: `${XENSTORE_CHANNEL_BASE}/to-host`,
    inDir: `${XENSTORE_CHANNEL_BASE}/to-guest`,
  });
}
