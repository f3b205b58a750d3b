import { EventEmitter } from 'node:events';
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { PortholeError } from '@porthole/protocol';
import { ExitStatus, InstallOptions, InstallResult, describeError } from '../client';
import type { Guest } from '../guest';
import { OutputChunk, OutputFd, TaskError, TaskJournal, TaskKind, TaskRecord } from './journal';

export interface ExecParams {
  target: string;
  argv?: string[];
  shell?: string;
  env?: Record<string, string>;
  /** Strings (passwords, tokens) to hide wherever they appear in the journaled command. */
  secrets?: string[];
  cwd?: string;
  user?: string | number;
  group?: string | number;
  timeoutMs?: number;
  /** Bytes for the command's stdin (closed after them); without it stdin is closed at once. */
  stdin?: Buffer;
}

export interface InjectParams extends Omit<InstallOptions, 'path' | 'requestId'> {
  target: string;
  path: string;
}

/** Live events of one task: `output` (OutputChunk), `progress` ({bytes, total}), `end` (TaskRecord). */
export type TaskEvents = EventEmitter;

interface Running {
  events: TaskEvents;
  cancel(): void;
  cancelled: boolean;
  /** The task no longer needs its connection. */
  release(): void;
}

/** A connection to a target and how many tasks (or reachability checks) use it. */
interface Shared {
  client: Promise<Guest>;
  users: number;
}

const SECRET = '***';

function taskError(err: unknown): TaskError {
  const e = PortholeError.from(err);
  return { code: e.codeName, message: describeError(e), ...(e.rule ? { rule: e.rule } : {}) };
}

/** A URL as journaled: user info and query (signatures, tokens) removed. */
function withoutCredentials(url: string): string {
  const u = new URL(url);
  return `${u.origin}${u.pathname}${u.search ? '?…' : ''}`;
}

function hide(text: string, secrets: string[]): string {
  return secrets.filter((s) => s.length > 0).reduce((t, s) => t.split(s).join(SECRET), text);
}

/**
 * Starts and tracks the broker's tasks (injections, execs): one connection per
 * target shared by the tasks running on it and closed after the last one, every
 * change recorded in the journal, live output and progress fanned out to
 * whoever watches.
 */
export class TaskManager {
  private readonly clients = new Map<string, Shared>();
  private readonly running = new Map<string, Running>();

  constructor(readonly journal: TaskJournal, private readonly connectTo: (target: string) => Promise<Guest>, private readonly onEnd: (t: TaskRecord) => void = () => undefined) {}

  /** Whether the target's agent answers (so a caller hears 502 at once, before any task exists). */
  async reach(target: string): Promise<void> {
    const shared = this.acquire(target);
    try {
      await shared.client;
    } finally {
      this.release(target, shared);
    }
  }

  private acquire(target: string): Shared {
    let shared = this.clients.get(target);
    if (!shared) {
      const entry: Shared = { client: this.connectTo(target), users: 0 };
      entry.client.catch(() => { if (this.clients.get(target) === entry) this.clients.delete(target); });
      this.clients.set(target, entry);
      shared = entry;
    }
    shared.users++;
    return shared;
  }

  /** Closed once unused: after this turn of the event loop, so a task that starts right after a check finds it open. */
  private release(target: string, shared: Shared): void {
    if (--shared.users > 0) return;
    setImmediate(() => {
      if (shared.users > 0) return;
      if (this.clients.get(target) === shared) this.clients.delete(target);
      shared.client.then((c) => c.close(), () => undefined);
    });
  }

  /** The connection a new task uses, held until the task ends. */
  private async use(target: string): Promise<{ client: Guest; release: () => void }> {
    const shared = this.acquire(target);
    const release = () => this.release(target, shared);
    try {
      return { client: await shared.client, release };
    } catch (err) {
      release();
      throw err;
    }
  }

  list(filter: { status?: string; kind?: string; target?: string; limit?: number } = {}): TaskRecord[] {
    const all = this.journal.list().filter((t) => (!filter.status || t.status === filter.status) && (!filter.kind || t.kind === filter.kind) && (!filter.target || t.target === filter.target));
    return filter.limit ? all.slice(0, filter.limit) : all;
  }

  get(id: string): TaskRecord | undefined {
    return this.journal.get(id);
  }

  /** Ask a running task to stop; false when it is not running. */
  cancel(id: string): boolean {
    const r = this.running.get(id);
    if (!r) return false;
    r.cancelled = true;
    r.cancel();
    return true;
  }

  /**
   * Replay the retained output from `offset`, then follow the task live until it ends. Returns the unsubscribe
   * function, or undefined when the task is not running (the replay was all there is).
   */
  watch(id: string, offset: number, on: { output(c: OutputChunk): void; progress?(p: unknown): void; end(t: TaskRecord): void }): (() => void) | undefined {
    // Replay and subscription happen in one tick, so no chunk falls between them.
    for (const c of this.journal.output(id, offset)) on.output(c);
    const r = this.running.get(id);
    if (!r) return undefined;
    const progress = (p: unknown) => on.progress?.(p);
    r.events.on('output', on.output).on('progress', progress).on('end', on.end);
    return () => { r.events.off('output', on.output).off('progress', progress).off('end', on.end); };
  }

  /** Start a command; resolves once the task exists (the agent may still refuse it, which ends the task). */
  async startExec(p: ExecParams): Promise<TaskRecord> {
    const { client, release } = await this.use(p.target);
    const secrets = [...(p.secrets ?? []), ...Object.values(p.env ?? {})];
    const params = {
      ...(p.argv ? { argv: p.argv.map((a) => hide(a, secrets)) } : { shell: hide(p.shell ?? '', secrets) }),
      // Names only: values can be secrets.
      envNames: Object.keys(p.env ?? {}),
      cwd: p.cwd, user: p.user, group: p.group, timeoutMs: p.timeoutMs,
      stdinBytes: p.stdin?.length ?? 0,
    };
    const task = client.exec(p.argv ?? { shell: p.shell ?? '' }, {
      env: p.env, cwd: p.cwd, user: p.user, group: p.group, timeoutMs: p.timeoutMs, stdin: p.stdin !== undefined,
      secretEnv: Object.keys(p.env ?? {}),
    });
    const record = this.begin('exec', p.target, params, () => task.cancel('cancelled through the broker API'), release);
    if (p.stdin) task.stdin.end(p.stdin);
    task.stdout.on('data', (d: Buffer) => this.output(record.id, 'stdout', d));
    task.stderr.on('data', (d: Buffer) => this.output(record.id, 'stderr', d));
    // The task ends after its last output chunk was journaled.
    const drained = Promise.all([finished(task.stdout), finished(task.stderr)]).catch(() => undefined);
    task.exit.then(
      async (exit: ExitStatus) => { await drained; this.finish(record.id, exit.cancelled ? 'cancelled' : 'done', { result: { ...exit } }); },
      async (err: unknown) => { await drained; this.finish(record.id, 'failed', { error: taskError(err) }); },
    );
    return record;
  }

  /** Inject a file; `done` settles with the finished record. */
  async startInject(p: InjectParams, source: Readable | { url: string }): Promise<{ record: TaskRecord; done: Promise<TaskRecord> }> {
    const { client, release } = await this.use(p.target);
    const { target, ...options } = p;
    const params = {
      ...options,
      mode: options.mode === undefined ? undefined : `0${options.mode.toString(8)}`,
      ...(source instanceof Readable ? { source: 'request body' } : { url: withoutCredentials(source.url) }),
    };
    const id = randomUUID();
    const task = client.installFile(source instanceof Readable ? source : { url: source.url }, { ...options, requestId: id });
    const record = this.begin('inject', target, params, () => task.cancel('cancelled through the broker API'), release, id);
    task.on('progress', (prog: { bytes: number; total?: number }) => this.running.get(id)?.events.emit('progress', prog));
    const done = task.result.then(
      (r: InstallResult) => this.finish(id, 'done', { result: { path: r.path.toString(), size: r.size, sha256: r.sha256, uid: r.uid, gid: r.gid, mode: `0${r.mode.toString(8)}`, resumedFrom: r.resumedFrom } }),
      (err: unknown) => this.finish(id, this.running.get(id)?.cancelled ? 'cancelled' : 'failed', { error: taskError(err) }),
    );
    return { record, done };
  }

  /** Close the connections; running tasks stay `running` in the journal and read back as interrupted. */
  close(): void {
    for (const c of this.clients.values()) c.client.then((x) => x.close(), () => undefined);
    this.clients.clear();
    this.journal.close();
  }

  private begin(kind: TaskKind, target: string, params: Record<string, unknown>, cancel: () => void, release: () => void, id: string = randomUUID()): TaskRecord {
    const record: TaskRecord = {
      id, target, kind, params: JSON.parse(JSON.stringify(params)) as Record<string, unknown>, status: 'running',
      createdAt: new Date().toISOString(), outputBytes: 0, outputRetainedFrom: 0,
    };
    this.running.set(id, { events: new EventEmitter(), cancel, cancelled: false, release });
    this.journal.create(record);
    return record;
  }

  private output(id: string, fd: OutputFd, data: Buffer): void {
    const chunk = this.journal.appendOutput(id, fd, data);
    if (chunk) this.running.get(id)?.events.emit('output', chunk);
  }

  private finish(id: string, status: TaskRecord['status'], change: Pick<TaskRecord, 'result' | 'error'>): TaskRecord {
    const start = Date.parse(this.journal.get(id)!.createdAt);
    const record = this.journal.update(id, { ...change, status, endedAt: new Date().toISOString(), durationMs: Date.now() - start })!;
    const r = this.running.get(id);
    this.running.delete(id);
    r?.release();
    r?.events.emit('end', record);
    this.onEnd(record);
    return record;
  }
}
