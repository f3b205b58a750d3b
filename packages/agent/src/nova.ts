import { setTimeout as sleep } from 'node:timers/promises';
import { v1, PortholeError, RepeatLimitedLogger } from '@porthole/protocol';
import { XenstoreClient, XenstoreError, XENSTORE_REL_PATH_MAX } from '@porthole/xenstore';
import { Agent } from './agent';
import { writeFileAtomic } from './files';
import { showPath } from './paths';
import { AGENT_VERSION } from './version';
import { crypto } from './builtins';

/**
 * Requests the way Xen hosts (Nova's xenapi "agent" plugin) send them to a
 * guest agent: dom0 writes data/host/<id> = JSON {"name", "value"}; the agent
 * deletes it and answers data/guest/<id> = JSON {"returncode", "message"}
 * (both relative to the guest's /local/domain/<domid>). Return codes follow
 * the classic Unix agent: "0" done, "404" no such command, "500" failed;
 * Porthole adds "403" for a refusal by the owner's policy.
 */

export const NOVA_REQUEST_DIR = 'data/host';
export const NOVA_REPLY_DIR = 'data/guest';

export interface NovaReply {
  returncode: string;
  message: string;
}

/** Commands of the Nova agents that Porthole deliberately does not implement. */
const NOT_SUPPORTED: Readonly<Record<string, string>> = {
  password: 'setting the password',
  keyinit: 'the key exchange for setting the password',
  resetnetwork: 'resetting the network configuration',
  agentupdate: 'updating itself',
  kmsactivate: 'Windows KMS activation',
};

/** A reply is one xenstore value: keep it well inside the guest's 2048-byte node limit. */
const MAX_MESSAGE = 1024;

/**
 * Nova's plugin reads a reply and never removes it; the longest it waits for one is
 * agent_version_timeout (300 s; agent_timeout is 30 s, agent_resetnetwork_timeout 60 s). Replies
 * older than that are cleared: data/guest holds only ~54 of them (the guest's node limit counts
 * child names), and a full data/guest would leave every further request unanswered.
 */
export const NOVA_REPLY_TTL_MS = 300_000;

/** Errors of a store that has no room for the reply now (C xenstored, oxenstored): the request waits. */
const NO_ROOM = new Set(['ENOSPC', 'E2BIG', 'EQUOTA']);

/**
 * Nova's plugin reads replies with xenstore-read, which escapes backslashes
 * and bytes outside printable ASCII: anything JSON would escape, or that would
 * be escaped, breaks its json.loads. So messages stay printable ASCII without
 * quotes or backslashes.
 */
function plainAscii(text: string): string {
  return text.replace(/"/g, "'").replace(/\\/g, '/').replace(/[^\x20-\x7e]/g, '?');
}

class BadRequest extends Error {}

function strictBase64(text: unknown, what: string): Buffer {
  if (typeof text !== 'string') throw new BadRequest(`${what} must be a base64 string`);
  const compact = text.replace(/\s+/g, '');
  if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(compact)) {
    throw new BadRequest(`${what} is not valid base64`);
  }
  return Buffer.from(compact, 'base64');
}

const reply = (returncode: string, message: string): NovaReply => ({
  returncode,
  message: plainAscii(message.length > MAX_MESSAGE ? `${message.slice(0, MAX_MESSAGE)}...` : message),
});

/**
 * Serves data/host on its own xenbus connection next to the channel's.
 * `apply(false)` (the owner's nova.enabled = false) leaves data/host alone, so
 * another agent can serve it.
 */
export class NovaRequests {
  /** Bumped by every apply(): a serve loop of an older generation ends. */
  private generation = 0;
  private enabled = false;
  private client?: XenstoreClient;
  private readonly busy = new Set<string>();
  /** Answers that found no room in data/guest: written when there is some, the request left in data/host meanwhile. */
  private readonly unsent = new Map<string, { answer: NovaReply; audit: Record<string, unknown>; started: number }>();
  /** Replies in data/guest and since when (those found at start: since then). */
  private readonly replies = new Map<string, number>();
  /** Requests whose path a guest cannot use: reported once. */
  private readonly unusable = new Set<string>();
  private timer?: NodeJS.Timeout;
  private readonly warnings: RepeatLimitedLogger;
  private readonly replyTtlMs: number;

  constructor(private readonly options: { path: string; agent: Agent; retryMs?: number; replyTtlMs?: number }) {
    this.warnings = new RepeatLimitedLogger(options.agent.log);
    this.replyTtlMs = options.replyTtlMs ?? NOVA_REPLY_TTL_MS;
  }

  private get log() {
    return this.options.agent.log;
  }

  apply(enabled: boolean): void {
    if (enabled === this.enabled) return;
    this.enabled = enabled;
    const gen = ++this.generation;
    this.client?.close();
    this.client = undefined;
    clearInterval(this.timer);
    this.timer = undefined;
    if (enabled) {
      void this.serve(gen);
      // Old replies are cleared, and answers that waited for room are tried again, a few times per lifetime of a reply.
      this.timer = setInterval(() => { if (this.client) void this.tidy(this.client); }, Math.min(30_000, this.replyTtlMs / 4));
      this.timer.unref();
    }
  }

  stop(): void {
    this.apply(false);
  }

  private async serve(gen: number): Promise<void> {
    const retryMs = this.options.retryMs ?? 2000;
    for (let failures = 0; gen === this.generation; failures++) {
      try {
        const client = await XenstoreClient.connectGuest(this.options.path);
        if (gen !== this.generation) {
          client.close();
          return;
        }
        this.client = client;
        failures = 0;
        this.log.info('serving Nova-compatible requests', { at: `${NOVA_REQUEST_DIR}/<id>`, xenstore: client.description });
        for await (const id of client.watchChildren(NOVA_REQUEST_DIR)) void this.handle(client, id);
      } catch (err) {
        if (gen === this.generation && failures % 30 === 0) {
          this.log.warn('Nova-compatible requests: xenstore not available, retrying', { error: (err as Error).message });
        }
      }
      if (gen === this.generation) await sleep(retryMs, undefined, { ref: false });
    }
  }

  /** Clear replies older than Nova waits for, then answer what waited for room, oldest first. */
  private async tidy(client: XenstoreClient): Promise<void> {
    try {
      const now = Date.now();
      const present = new Set(await client.directory(NOVA_REPLY_DIR).catch((err: unknown) => {
        if (err instanceof XenstoreError && err.code === 'ENOENT') return [] as string[];
        throw err;
      }));
      for (const id of present) if (!this.replies.has(id)) this.replies.set(id, now);
      let cleared = 0;
      for (const [id, at] of this.replies) {
        if (!present.has(id)) this.replies.delete(id);
        else if (now - at >= this.replyTtlMs) {
          await client.rm(`${NOVA_REPLY_DIR}/${id}`);
          this.replies.delete(id);
          cleared++;
        }
      }
      if (cleared) this.log.info('Nova-compatible replies nobody removed were cleared', { count: cleared, olderThanSeconds: this.replyTtlMs / 1000 });
      for (const id of [...this.unsent.keys()]) {
        await this.handle(client, id);
        if (this.unsent.has(id)) break; // still no room
      }
    } catch (err) {
      if (!client.closed) this.warnings.warn('Nova-compatible replies could not be tidied', { error: (err as Error).message });
    }
  }

  private async handle(client: XenstoreClient, id: string): Promise<void> {
    if (this.busy.has(id) || this.unusable.has(id)) return;
    this.busy.add(id);
    const request = `${NOVA_REQUEST_DIR}/${id}`;
    const replyPath = `${NOVA_REPLY_DIR}/${id}`;
    const waited = this.unsent.get(id);
    const started = waited?.started ?? Date.now();
    const audit: Record<string, unknown> = waited?.audit ?? { request: 'nova', requestId: id };
    try {
      if (request.length > XENSTORE_REL_PATH_MAX) {
        // dom0 may write paths a guest may not even name: only dom0 can remove this one.
        this.unusable.add(id);
        this.warnings.warn('Nova-compatible request ignored: the agent cannot read or remove it, its path is longer than a guest may use', {
          idLength: id.length, maxPath: XENSTORE_REL_PATH_MAX,
        });
        return;
      }
      const raw = await client.tryRead(request);
      if (raw === undefined) {
        this.unsent.delete(id); // already taken, or Nova gave up waiting and removed it
        return;
      }
      if (replyPath.length > XENSTORE_REL_PATH_MAX) {
        await client.rm(request);
        this.warnings.warn('Nova-compatible request removed: its id is too long for a reply at data/guest/<id>', { idLength: id.length, maxPath: XENSTORE_REL_PATH_MAX });
        return;
      }
      const answer = waited?.answer ?? await this.answer(id, raw, audit);
      try {
        // The reply is written and the request removed together, or neither: a request is never taken without its reply.
        await client.transaction(async (tx) => {
          await tx.write(replyPath, JSON.stringify(answer));
          await tx.rm(request);
        });
      } catch (err) {
        this.unsent.set(id, { answer, audit, started });
        if (err instanceof XenstoreError && NO_ROOM.has(err.code)) {
          this.warnings.warn('Nova-compatible reply cannot be written yet: data/guest is full of replies nobody removed; the request stays in data/host', {
            requestId: id, replies: this.replies.size, error: err.code, retryAfterSeconds: Math.ceil(this.replyTtlMs / 1000),
          });
          return;
        }
        throw err;
      }
      this.unsent.delete(id);
      this.replies.set(id, Date.now());
      const level = answer.returncode === '0' ? 'info' : 'warn';
      this.log.log(level, 'request done', { ...audit, result: answer.returncode, error: answer.returncode === '0' ? undefined : answer.message, durationMs: Date.now() - started });
    } catch (err) {
      if (!client.closed) this.warnings.warn('Nova-compatible request could not be answered', { ...audit, error: (err as Error).message });
    } finally {
      this.busy.delete(id);
    }
  }

  /** The reply for one request value. */
  async answer(id: string, raw: Buffer, audit: Record<string, unknown> = {}): Promise<NovaReply> {
    let request: { name?: unknown; value?: unknown };
    try {
      request = JSON.parse(raw.toString('utf8')) as typeof request;
    } catch {
      return reply('500', `request ${id} is not JSON`);
    }
    if (typeof request !== 'object' || request === null || typeof request.name !== 'string') return reply('500', "Request is missing 'name' key");
    const name = request.name;
    audit.request = `nova:${name}`;
    try {
      switch (name) {
        case 'version':
          return reply('0', AGENT_VERSION.replace(/^porthole-agent /, ''));
        case 'features':
          return reply('0', this.features().join(','));
        case 'file_inject': {
          const v = request.value as { b64_path?: unknown; b64_file?: unknown } | null;
          if (typeof v !== 'object' || v === null) throw new BadRequest('file_inject needs a value with b64_path and b64_file');
          return await this.inject(strictBase64(v.b64_path, 'b64_path'), strictBase64(v.b64_file, 'b64_file'), audit);
        }
        case 'injectfile': {
          // The legacy form: base64 of "path,contents"; a path never contains the comma that separates them.
          const both = strictBase64(request.value, 'injectfile value');
          const comma = both.indexOf(0x2c);
          if (comma < 0) throw new BadRequest('injectfile value must be base64 of path,contents (no comma found)');
          return await this.inject(both.subarray(0, comma), both.subarray(comma + 1), audit);
        }
        default:
          if (NOT_SUPPORTED[name]) {
            return reply('404', `porthole-agent does not support ${name} (${NOT_SUPPORTED[name]}); it serves ${this.features().join(', ')}`);
          }
          return reply('404', `No such agent command '${name}'`);
      }
    } catch (err) {
      if (err instanceof BadRequest) return reply('500', err.message);
      const e = PortholeError.from(err);
      const denied = e.code === v1.ErrorCode.ERROR_CODE_POLICY_DENIED;
      return reply(denied ? '403' : '500', e.rule ? `${e.message} (${e.rule})` : e.message);
    }
  }

  /** What Nova's plugin asks for before it injects (it picks file_inject over injectfile). */
  private features(): string[] {
    const inject = this.options.agent.currentPolicy.config.fileWrite.enabled ? ['file_inject', 'injectfile'] : [];
    return ['version', 'features', ...inject];
  }

  /** Through the one atomic write path, under the owner's file_write policy. */
  private async inject(path: Buffer, content: Buffer, audit: Record<string, unknown>): Promise<NovaReply> {
    audit.path = showPath(path);
    const { result } = await writeFileAtomic(
      this.options.agent.fileContext,
      `nova:${crypto().randomUUID()}`,
      { path, mkdirParents: true, size: content.length, sizeKnown: true },
      (async function* () { yield { offset: 0, data: content }; })(),
    );
    Object.assign(audit, { size: Number(result.size), sha256: result.sha256, mode: `0${(result.mode ?? 0).toString(8)}` });
    return reply('0', `wrote ${showPath(path)} (${content.length} bytes, sha256 ${result.sha256})`);
  }
}
