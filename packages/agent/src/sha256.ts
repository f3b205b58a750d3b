// The sha256 of a file the agent moves. Under emulation hashing is most of what a checked transfer
// costs the guest, and on the event loop it took turns with the port: a read-back spent three quarters
// of its time hashing, one MiB after another. A large transfer is hashed on a second thread, beside the
// port's reads and writes and the file's (docs/BENCHMARKS.md, "Hashing on a second thread").
import type { Worker } from 'node:worker_threads';
import { constants as fsc, promises as fsp } from 'node:fs';
import { crypto } from './builtins';
import type { AuditLogger } from './audit';

/**
 * The file a transfer is written to: the bytes given to its hash so far are in it, from its start, whenever the
 * hash is given more or asked for its digest. Its hash may then read them back instead of taking them as they come.
 */
export interface WrittenFile {
  path: string | Buffer;
  /** Its identity when it was created: a name that leads elsewhere by the time it is read fails the hash. */
  dev: number;
  ino: number;
}

/** A running sha256. */
export interface Sha256 {
  /** Hashed on the hashing thread (else on the event loop). */
  readonly onThread: boolean;
  /** Adds `data`; once this resolves `data` may be filled again (it was hashed, or copied for hashing). */
  update(data: Buffer): Promise<void>;
  digest(): Promise<string>;
}

/**
 * Bytes hashed between two turns of the event loop. Under emulation hashing 512 KiB takes ~10 ms, which
 * a small request that arrived meanwhile would wait out: in four paired rounds of injections, an info
 * request beside one took 13.4 ms (p50) with 128 KiB steps, 11.5 with 64 KiB, 10.0 with 32 KiB, at the
 * same throughput (21.3, 22.3, 20.9 MiB/s).
 */
const HASH_STEP = 64 * 1024;

/** sha256 on the event loop, a HASH_STEP at a time with the loop let in between. */
class EventLoopSha256 implements Sha256 {
  readonly onThread = false;
  private readonly hash = crypto().createHash('sha256');

  async update(data: Buffer): Promise<void> {
    for (let from = 0; from < data.length; from += HASH_STEP) {
      if (from > 0) await new Promise(setImmediate);
      this.hash.update(data.subarray(from, from + HASH_STEP));
    }
  }

  async digest(): Promise<string> {
    return this.hash.digest('hex');
  }
}

/**
 * Transfers at least this large are hashed on the hashing thread. Starting it costs 0.3–1.5 s of a vCPU
 * under emulation, about what hashing 32 MiB costs there, and it holds ~6 MiB while it runs (~3 MiB stay
 * once one has run): a transfer that asks for it first is hashed on the event loop (or, when it is written to a
 * file, read back by the thread once it runs), and the thread ends when the agent is idle. (With 8 MiB, a
 * 16 MiB read-back whose host hung up at once cost the agent 1.5 s of CPU, most of it the thread's start.)
 */
export const OFF_THREAD_MIN = 32 * 1024 * 1024;
/** Bytes are copied to the thread in slots of this size: four of them let hashing lag 4 MiB behind. */
const SLOT_SIZE = 1024 * 1024;
const SLOTS = 4;
/** A written file's hash may lag this far behind its writer (the bytes wait in the page cache meanwhile). */
const FILE_LAG = 16 * 1024 * 1024;
/** A transfer that waits for a thread which neither starts nor fails within this is hashed on the event loop. */
const THREAD_START_LIMIT_MS = 20000;

/**
 * Messages to the thread: [job, slot, length] hashes a slot; [job, -1] asks for the digest; [job, -3, upTo,
 * path, dev, ino] hashes a written file on from where the job's last such request ended, up to `upTo`.
 * From it: [job, slot] (the slot is free), [job, -1, hex], [job, -4, why] (the job's file could not be read:
 * no digest), [job, -3, upTo] (hashed that far), [0, -2] (ready).
 */
const THREAD_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const { memory, slotSize } = workerData;
const jobs = new Map();
const hashedTo = new Map();
const failed = new Map();
const fileBuffer = Buffer.allocUnsafe(slotSize);
// Opened for each request, not kept: a transfer that is abandoned leaves no descriptor behind.
function hashFile(job, hash, upTo, path, dev, ino) {
  const fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile() || st.dev !== dev || st.ino !== ino) throw new Error('its name leads to another file');
    for (let at = hashedTo.get(job) ?? 0; at < upTo;) {
      const n = fs.readSync(fd, fileBuffer, 0, Math.min(fileBuffer.length, upTo - at), at);
      if (n === 0) throw new Error('it holds fewer bytes than were written to it');
      hash.update(fileBuffer.subarray(0, n));
      hashedTo.set(job, (at += n));
    }
  } finally {
    fs.closeSync(fd);
  }
}
parentPort.on('message', ([job, slot, length, path, dev, ino]) => {
  let hash = jobs.get(job);
  if (!hash) jobs.set(job, (hash = createHash('sha256')));
  if (slot === -1) {
    const why = failed.get(job);
    jobs.delete(job);
    hashedTo.delete(job);
    failed.delete(job);
    parentPort.postMessage(why === undefined ? [job, -1, hash.digest('hex')] : [job, -4, why]);
  } else if (slot === -3) {
    if (!failed.has(job)) {
      try {
        hashFile(job, hash, length, path, dev, ino);
      } catch (e) {
        failed.set(job, e.message);
      }
    }
    parentPort.postMessage([job, -3, length]);
  } else {
    hash.update(new Uint8Array(memory, slot * slotSize, length));
    parentPort.postMessage([job, slot]);
  }
});
parentPort.postMessage([0, -2]);
`;

type Reply = [job: number, slot: number, detail?: string | number];

interface Waiter<T> {
  resolve(value: T): void;
  reject(err: Error): void;
}

class HashingThread {
  ready = false;
  /** Resolves true once it runs, false if it ended first. */
  readonly whenReady: Promise<boolean>;
  private announceReady!: (ready: boolean) => void;
  private readonly memory = new SharedArrayBuffer(SLOT_SIZE * SLOTS);
  private readonly worker: Worker;
  private readonly free: number[] = [];
  private readonly slotWaiters: Waiter<number>[] = [];
  private readonly digests = new Map<number, Waiter<string>>();
  /** Written files' hashes, told how far the thread has hashed them. */
  private readonly fileJobs = new Map<number, WrittenFileSha256>();
  private nextJob = 1;
  private readonly startedAt = performance.now();
  /** Why no more hashing happens here (stopped, or failed): what asks afterwards hears it. */
  ended?: Error;

  constructor(private readonly log: AuditLogger | undefined, private readonly failed: (thread: HashingThread) => void) {
    this.whenReady = new Promise((resolve) => { this.announceReady = resolve; });
    const { Worker } = require('node:worker_threads') as typeof import('node:worker_threads');
    this.worker = new Worker(THREAD_SOURCE, {
      eval: true, workerData: { memory: this.memory, slotSize: SLOT_SIZE },
      // Bounds, not savings (the same RSS without them): it allocates little beyond its hashes, and a leak there
      // would end the thread (hashing goes back to the event loop) rather than grow the agent.
      resourceLimits: { maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 16 },
    });
    this.worker.unref(); // never what keeps the agent running
    this.worker.on('message', (reply: Reply) => this.receive(reply));
    this.worker.on('error', (e) => this.fail(e));
    this.worker.on('exit', (code) => this.fail(new Error(`it exited with code ${code}`)));
  }

  /** Hashes bytes given to it: each is copied to a slot, so the caller may fill its buffer again at once. */
  job(): Sha256 {
    const job = this.nextJob++;
    return {
      onThread: true,
      update: async (data) => {
        for (let from = 0; from < data.length; from += SLOT_SIZE) {
          const part = data.subarray(from, from + SLOT_SIZE);
          const slot = await this.slot();
          part.copy(new Uint8Array(this.memory, slot * SLOT_SIZE, part.length));
          this.worker.postMessage([job, slot, part.length]);
        }
      },
      digest: () => this.digest(job),
    };
  }

  /** Has the thread hash `file` up to `upTo` (it answers with `hashedUpTo` on `owner`). */
  hashFile(owner: WrittenFileSha256, file: WrittenFile, upTo: number): void {
    this.fileJobs.set(owner.job, owner);
    this.worker.postMessage([owner.job, -3, upTo, file.path, file.dev, file.ino]);
  }

  newJob(): number {
    return this.nextJob++;
  }

  digest(job: number): Promise<string> {
    this.fileJobs.delete(job);
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => {
      this.digests.set(job, { resolve, reject });
      this.worker.postMessage([job, -1, 0]);
    });
  }

  /** Ends the thread; what it held (an abandoned transfer's hash, the slots) goes with it. Resolves once it has exited. */
  async stop(): Promise<void> {
    if (this.ready) this.log?.info('hashing thread ended (idle)');
    this.end(new Error("the agent's hashing thread was stopped"));
    await this.worker.terminate();
  }

  private slot(): Promise<number> {
    if (this.ended) return Promise.reject(this.ended);
    const slot = this.free.pop();
    if (slot !== undefined) return Promise.resolve(slot);
    return new Promise((resolve, reject) => this.slotWaiters.push({ resolve, reject }));
  }

  private receive([job, slot, detail]: Reply): void {
    if (slot === -2) {
      this.ready = true;
      this.log?.info('hashing thread started', { ms: Math.round(performance.now() - this.startedAt) });
      for (let s = 0; s < SLOTS; s++) this.free.push(s);
      this.announceReady(true);
    } else if (slot === -1 || slot === -4) {
      const waiter = this.digests.get(job);
      this.digests.delete(job);
      if (slot === -1) waiter?.resolve(detail as string);
      else waiter?.reject(new Error(`the file written could not be read back to hash it: ${detail as string}`));
    } else if (slot === -3) {
      this.fileJobs.get(job)?.hashedUpTo(detail as number);
    } else {
      const waiter = this.slotWaiters.shift();
      if (waiter) waiter.resolve(slot);
      else this.free.push(slot);
    }
  }

  private fail(cause: Error): void {
    if (this.ended) return;
    this.failed(this);
    this.log?.warn('hashing thread failed: large transfers are hashed on the event loop from now on', { error: cause.message });
    this.end(new Error(`the agent's hashing thread stopped: ${cause.message}`, { cause }));
  }

  /** No more hashing here: whoever waits for a slot, a file's progress or a digest hears why. */
  private end(error: Error): void {
    this.ended = error;
    this.announceReady(false);
    for (const waiter of this.slotWaiters.splice(0)) waiter.reject(error);
    for (const waiter of this.digests.values()) waiter.reject(error);
    this.digests.clear();
    for (const job of this.fileJobs.values()) job.threadEnded(error);
    this.fileJobs.clear();
  }
}

/** Feeds the first `length` bytes of `file` to `hash` on the event loop, if the file is still the one written. */
async function hashWrittenFile(file: WrittenFile, length: number, hash: Sha256): Promise<void> {
  const handle = await fsp.open(file.path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  try {
    const st = await handle.stat();
    if (!st.isFile() || st.dev !== file.dev || st.ino !== file.ino) {
      throw new Error('the file written could not be read back to hash it: its name leads to another file');
    }
    const buf = Buffer.allocUnsafe(SLOT_SIZE);
    for (let at = 0; at < length;) {
      const { bytesRead } = await handle.read(buf, 0, Math.min(buf.length, length - at), at);
      if (bytesRead === 0) throw new Error('the file written could not be read back to hash it: it holds fewer bytes than were written to it');
      await hash.update(buf.subarray(0, bytesRead));
      at += bytesRead;
    }
  } finally {
    await handle.close();
  }
}

/**
 * The hash of a large transfer written to a file that began while the hashing thread was starting (the first
 * after the agent was idle). Hashed on the event loop, as before, it stayed there to its end: the thread, once
 * up, sat idle while the event loop hashed and wrote (a first 256 MiB injection 28–32 MiB/s, against 42–45
 * this way). Instead the bytes are only written until the thread runs; it then reads them back from the file
 * (the page cache) and follows the writer, told how far the file is written, never more than FILE_LAG behind.
 * Should it never start, the event loop reads the file back itself at the end. (Once the thread runs, a
 * transfer's bytes go to it in slots: reading the file back cost its thread more than the copy costs here.)
 */
class WrittenFileSha256 implements Sha256 {
  readonly onThread = true;
  readonly job: number;
  /** Bytes given to update: all but the last piece are known to be in the file. */
  private given = 0;
  private inFile = 0;
  /** How far the thread was asked to hash, and has hashed. */
  private asked = 0;
  private hashed = 0;
  private lagWaiter?: Waiter<void>;
  private ended?: Error;

  constructor(private readonly thread: HashingThread, private readonly file: WrittenFile) {
    this.job = thread.newJob();
  }

  async update(data: Buffer): Promise<void> {
    this.inFile = this.given;
    this.given += data.length;
    if (!this.thread.ready) return; // it catches up once it runs (or, if it never does, digest() reads the file)
    const ended = this.ended ?? this.thread.ended;
    if (ended) throw ended;
    this.ask();
    if (this.inFile - this.hashed > FILE_LAG) await new Promise<void>((resolve, reject) => { this.lagWaiter = { resolve, reject }; });
  }

  async digest(): Promise<string> {
    this.inFile = this.given;
    if (!this.thread.ready) {
      let timer: NodeJS.Timeout | undefined;
      const limit = new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(false), THREAD_START_LIMIT_MS); });
      const ready = await Promise.race([this.thread.whenReady, limit]);
      clearTimeout(timer);
      if (!ready) {
        const hash = new EventLoopSha256();
        await hashWrittenFile(this.file, this.inFile, hash);
        return hash.digest();
      }
    }
    const ended = this.ended ?? this.thread.ended;
    if (ended) throw ended;
    this.ask(true);
    return this.thread.digest(this.job);
  }

  /** The thread has hashed the file this far. */
  hashedUpTo(upTo: number): void {
    this.hashed = upTo;
    if (this.lagWaiter && this.inFile - this.hashed <= FILE_LAG) {
      this.lagWaiter.resolve();
      this.lagWaiter = undefined;
    }
    this.ask();
  }

  threadEnded(error: Error): void {
    this.ended = error;
    this.lagWaiter?.reject(error);
    this.lagWaiter = undefined;
  }

  /**
   * One request in flight at a time, so that a thread behind reads all that was written since in one go;
   * the last one (`final`) goes at once (the thread goes on from where its previous request ended).
   */
  private ask(final = false): void {
    if ((this.asked > this.hashed && !final) || this.inFile <= this.asked || this.ended) return;
    this.asked = this.inFile;
    this.thread.hashFile(this, this.file, this.asked);
  }
}

let thread: HashingThread | undefined;
/** The thread failed once: hashing stays on the event loop rather than starting one again and again. */
let threadFailed = false;

/**
 * A sha256 for a transfer of `bytes` (as far as known): on the hashing thread when it is large and the thread
 * runs or, for a transfer written to `file` (WrittenFileSha256), starts. A large one starts the thread if none
 * runs (`log` hears of it).
 */
export function sha256For(bytes: number, log?: AuditLogger, file?: WrittenFile): Sha256 {
  if (bytes >= OFF_THREAD_MIN && !threadFailed) {
    thread ??= new HashingThread(log, (t) => {
      threadFailed = true;
      if (thread === t) thread = undefined;
    });
    if (thread.ready) return thread.job();
    if (file) return new WrittenFileSha256(thread, file);
  }
  return new EventLoopSha256();
}

/**
 * The agent is idle (no request in progress): the hashing thread ends; the next large transfer starts it
 * again. Resolves once it has exited: the memory it shared is freed by the main thread's next collection.
 */
export async function stopHashingThread(): Promise<void> {
  const stopping = thread;
  thread = undefined;
  await stopping?.stop();
}
