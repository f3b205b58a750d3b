import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { Packr } from 'msgpackr';

export type TaskKind = 'exec' | 'inject';
/** `interrupted`: the broker stopped while the task ran, so its outcome in the guest is unknown. */
export type TaskStatus = 'running' | 'done' | 'failed' | 'cancelled' | 'interrupted';
export type OutputFd = 'stdout' | 'stderr';

export interface TaskError {
  code: string;
  message: string;
  rule?: string;
}

/** What the journal keeps about a task. `params` never holds file contents, env values or secrets. */
export interface TaskRecord {
  id: string;
  target: string;
  kind: TaskKind;
  params: Record<string, unknown>;
  status: TaskStatus;
  createdAt: string;
  endedAt?: string;
  durationMs?: number;
  result?: Record<string, unknown>;
  error?: TaskError;
  /** Bytes of output the task produced; output before `outputRetainedFrom` was dropped (retention limit). */
  outputBytes: number;
  outputRetainedFrom: number;
}

export interface OutputChunk {
  /** Position of the chunk's first byte in the task's output (stdout and stderr interleaved as they came). */
  offset: number;
  fd: OutputFd;
  data: Buffer;
}

export interface JournalOptions {
  /** Output bytes kept per task; older output is dropped first (default 1 MiB). */
  outputRetention?: number;
  /** Finished tasks kept; the oldest are forgotten first (default 1000). */
  maxTasks?: number;
  /** The file is rewritten when it holds this many bytes more than twice its live content (default 8 MiB). */
  compactSlack?: number;
  /** A write to the journal failed (the task goes on; the record may be lost at a restart). */
  onError?: (err: Error) => void;
}

type Entry =
  | { t: 'task'; task: TaskRecord }
  | { t: 'out'; id: string; offset: number; fd: OutputFd; data: Buffer }
  | { t: 'forget'; id: string };

interface Held {
  task: TaskRecord;
  chunks: OutputChunk[];
  retained: number;
}

// Each record is a 4-byte length and one msgpack value, so a record torn by a crash is recognised and cut off.
const packr = new Packr({ useRecords: false, moreTypes: false });
const HEADER = 4;
/** Rough bytes of a task record (for the compaction estimate only). */
const TASK_RECORD_ESTIMATE = 256;

function frame(entry: Entry): Buffer {
  const body = packr.pack(entry);
  const out = Buffer.allocUnsafe(HEADER + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, HEADER);
  return out;
}

/**
 * Task records in an append-only file of msgpack records: a task's record is
 * written again whenever it changes and output chunks are appended as they
 * come; reading the file back keeps the last record of each task. The file is
 * compacted (rewritten with the live content only, then renamed over) when it
 * opens and when it has grown well past what it holds.
 */
export class TaskJournal {
  private readonly tasks = new Map<string, Held>();
  private fd = -1;
  private fileBytes = 0;
  private liveBytes = 0;
  private readonly outputRetention: number;
  private readonly maxTasks: number;
  private readonly compactSlack: number;

  constructor(readonly path: string, private readonly options: JournalOptions = {}) {
    this.outputRetention = options.outputRetention ?? 1024 * 1024;
    this.maxTasks = options.maxTasks ?? 1000;
    this.compactSlack = options.compactSlack ?? 8 * 1024 * 1024;
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    this.load();
    this.compact();
  }

  /** Tasks, newest first. */
  list(): TaskRecord[] {
    return [...this.tasks.values()].map((h) => h.task).reverse();
  }

  get(id: string): TaskRecord | undefined {
    return this.tasks.get(id)?.task;
  }

  /** Retained output from `offset` on (the first chunk is cut to start there). */
  output(id: string, offset: number): OutputChunk[] {
    const held = this.tasks.get(id);
    if (!held) return [];
    const out: OutputChunk[] = [];
    for (const c of held.chunks) {
      const end = c.offset + c.data.length;
      if (end <= offset) continue;
      out.push(c.offset >= offset ? c : { offset, fd: c.fd, data: c.data.subarray(offset - c.offset) });
    }
    return out;
  }

  /** Record a new task. */
  create(task: TaskRecord): void {
    this.tasks.set(task.id, { task, chunks: [], retained: 0 });
    this.liveBytes += TASK_RECORD_ESTIMATE;
    this.append({ t: 'task', task });
    this.forgetOldest();
    this.maybeCompact();
  }

  /** Record a change of a task (status, result); the output counters stay the journal's own. */
  update(id: string, change: Partial<Omit<TaskRecord, 'id' | 'outputBytes' | 'outputRetainedFrom'>>): TaskRecord | undefined {
    const held = this.tasks.get(id);
    if (!held) return undefined;
    held.task = { ...held.task, ...change };
    this.append({ t: 'task', task: held.task });
    this.maybeCompact();
    return held.task;
  }

  /** Append output of a running task. */
  appendOutput(id: string, fd: OutputFd, data: Buffer): OutputChunk | undefined {
    const held = this.tasks.get(id);
    if (!held || data.length === 0) return undefined;
    const chunk: OutputChunk = { offset: held.task.outputBytes, fd, data: Buffer.from(data) };
    this.hold(held, chunk);
    this.append({ t: 'out', id, offset: chunk.offset, fd, data: chunk.data });
    this.maybeCompact();
    return chunk;
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }

  private hold(held: Held, chunk: OutputChunk): void {
    held.chunks.push(chunk);
    held.retained += chunk.data.length;
    this.liveBytes += chunk.data.length;
    held.task.outputBytes = chunk.offset + chunk.data.length;
    while (held.retained > this.outputRetention) {
      const first = held.chunks[0];
      const excess = held.retained - this.outputRetention;
      // The oldest chunk goes, or its oldest bytes when it holds more than the excess.
      const cut = Math.min(excess, first.data.length);
      if (cut === first.data.length) held.chunks.shift();
      else held.chunks[0] = { offset: first.offset + cut, fd: first.fd, data: Buffer.from(first.data.subarray(cut)) };
      held.retained -= cut;
      this.liveBytes -= cut;
    }
    held.task.outputRetainedFrom = held.chunks[0]?.offset ?? held.task.outputBytes;
  }

  private forgetOldest(): void {
    if (this.tasks.size <= this.maxTasks) return;
    for (const [id, held] of this.tasks) {
      if (this.tasks.size <= this.maxTasks) break;
      if (held.task.status === 'running') continue;
      this.drop(id);
      this.append({ t: 'forget', id });
    }
  }

  private drop(id: string): void {
    const held = this.tasks.get(id);
    if (!held) return;
    this.liveBytes -= TASK_RECORD_ESTIMATE + held.retained;
    this.tasks.delete(id);
  }

  private load(): void {
    let data: Buffer;
    try {
      data = readFileSync(this.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new Error(`cannot read the task journal ${this.path}: ${(err as Error).message}`);
    }
    let pos = 0;
    while (pos + HEADER <= data.length) {
      const len = data.readUInt32BE(pos);
      if (pos + HEADER + len > data.length) break;
      let entry: Entry;
      try {
        entry = packr.unpack(data.subarray(pos + HEADER, pos + HEADER + len)) as Entry;
      } catch {
        break;
      }
      this.replay(entry);
      pos += HEADER + len;
    }
    // A broker that stopped while tasks ran cannot know how they ended.
    for (const held of this.tasks.values()) {
      if (held.task.status !== 'running') continue;
      held.task = {
        ...held.task,
        status: 'interrupted',
        error: { code: 'INTERRUPTED', message: 'the broker stopped while the task ran; its outcome in the guest is unknown' },
      };
    }
  }

  private replay(entry: Entry): void {
    switch (entry.t) {
      case 'task': {
        const held = this.tasks.get(entry.task.id);
        // Output records that came before this one are the count to keep.
        if (held) held.task = { ...entry.task, outputBytes: held.task.outputBytes, outputRetainedFrom: held.task.outputRetainedFrom };
        else {
          this.tasks.set(entry.task.id, { task: entry.task, chunks: [], retained: 0 });
          this.liveBytes += TASK_RECORD_ESTIMATE;
        }
        break;
      }
      case 'out': {
        const held = this.tasks.get(entry.id);
        if (held) this.hold(held, { offset: entry.offset, fd: entry.fd, data: Buffer.from(entry.data) });
        break;
      }
      case 'forget':
        this.drop(entry.id);
        break;
    }
  }

  private append(entry: Entry): void {
    if (this.fd < 0) return;
    const buf = frame(entry);
    try {
      writeSync(this.fd, buf);
      this.fileBytes += buf.length;
    } catch (err) {
      this.options.onError?.(new Error(`cannot write the task journal ${this.path}: ${(err as Error).message}`));
    }
  }

  private maybeCompact(): void {
    if (this.fileBytes > 2 * this.liveBytes + this.compactSlack) this.compact();
  }

  /** Rewrite the file with what is held, then rename it over the old one (a crash leaves one or the other). */
  private compact(): void {
    const tmp = `${this.path}.compact`;
    const fd = openSync(tmp, 'w', 0o600);
    let bytes = 0;
    try {
      for (const [id, held] of this.tasks) {
        const records = [frame({ t: 'task', task: held.task }), ...held.chunks.map((c) => frame({ t: 'out', id, offset: c.offset, fd: c.fd, data: c.data }))];
        for (const r of records) {
          writeSync(fd, r);
          bytes += r.length;
        }
      }
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.path);
    this.close();
    this.fd = openSync(this.path, 'a', 0o600);
    this.fileBytes = bytes;
  }
}
