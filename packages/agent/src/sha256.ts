// The sha256 of a file the agent moves. Under emulation hashing is most of what a checked transfer
// costs the guest, and on the event loop it took turns with the port: a read-back spent three quarters
// of its time hashing, one MiB after another. A large transfer is hashed on a second thread, beside the
// port's reads and writes and the file's (docs/BENCHMARKS.md, "Hashing on a second thread").
import type { Worker } from 'node:worker_threads';
import { crypto } from './builtins';
import type { AuditLogger } from './audit';

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
 * Transfers at least this large are hashed on the hashing thread. Starting it costs 0.4–1.5 s of a vCPU
 * under emulation, about what hashing 32 MiB costs there, and it holds ~6 MiB while it runs (~3 MiB stay
 * once one has run): a transfer that asks for it first is hashed on the event loop meanwhile, and the
 * thread ends when the agent is idle. (With 8 MiB, a 16 MiB read-back whose host hung up at once cost the
 * agent 1.5 s of CPU, most of it the thread's start.)
 */
export const OFF_THREAD_MIN = 32 * 1024 * 1024;
/** Bytes are copied to the thread in slots of this size: four of them let hashing lag 4 MiB behind. */
const SLOT_SIZE = 1024 * 1024;
const SLOTS = 4;

/** Messages: to the thread [job, slot, length] (a slot < 0 asks for the digest); from it the same shapes. */
const THREAD_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { memory, slotSize } = workerData;
const jobs = new Map();
parentPort.on('message', ([job, slot, length]) => {
  let hash = jobs.get(job);
  if (!hash) jobs.set(job, (hash = createHash('sha256')));
  if (slot < 0) {
    jobs.delete(job);
    parentPort.postMessage([job, -1, hash.digest('hex')]);
  } else {
    hash.update(new Uint8Array(memory, slot * slotSize, length));
    parentPort.postMessage([job, slot]);
  }
});
parentPort.postMessage([0, -2]);
`;

type Reply = [job: number, slot: number, digest?: string];

class HashingThread {
  ready = false;
  private readonly memory = new SharedArrayBuffer(SLOT_SIZE * SLOTS);
  private readonly worker: Worker;
  private readonly free: number[] = [];
  private readonly slotWaiters: { resolve: (slot: number) => void; reject: (e: Error) => void }[] = [];
  private readonly digests = new Map<number, { resolve: (hex: string) => void; reject: (e: Error) => void }>();
  private nextJob = 1;
  private readonly started = performance.now();
  /** Why no more hashing happens here (stopped, or failed): what asks afterwards hears it. */
  private ended?: Error;

  constructor(private readonly log: AuditLogger | undefined, private readonly failed: (thread: HashingThread) => void) {
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
      digest: () => this.ended ? Promise.reject(this.ended) : new Promise((resolve, reject) => {
        this.digests.set(job, { resolve, reject });
        this.worker.postMessage([job, -1, 0]);
      }),
    };
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

  private receive([job, slot, digest]: Reply): void {
    if (slot === -2) {
      this.ready = true;
      this.log?.info('hashing thread started', { ms: Math.round(performance.now() - this.started) });
      for (let s = 0; s < SLOTS; s++) this.free.push(s);
    } else if (slot === -1) {
      this.digests.get(job)?.resolve(digest!);
      this.digests.delete(job);
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

  /** No more hashing here: whoever waits for a slot or a digest hears why. */
  private end(error: Error): void {
    this.ended = error;
    for (const waiter of this.slotWaiters.splice(0)) waiter.reject(error);
    for (const waiter of this.digests.values()) waiter.reject(error);
    this.digests.clear();
  }
}

let thread: HashingThread | undefined;
/** The thread failed once: hashing stays on the event loop rather than starting one again and again. */
let threadFailed = false;

/**
 * A sha256 for a transfer of `bytes` (as far as known): on the hashing thread when it is large and the thread
 * runs. A large one starts the thread if none runs (`log` hears of it).
 */
export function sha256For(bytes: number, log?: AuditLogger): Sha256 {
  if (bytes >= OFF_THREAD_MIN && !threadFailed) {
    thread ??= new HashingThread(log, (t) => {
      threadFailed = true;
      if (thread === t) thread = undefined;
    });
    if (thread.ready) return thread.job();
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
