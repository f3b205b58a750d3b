// Memory a burst of requests borrowed goes back once the agent is idle: the
// read slabs kept for reuse, the thread that hashed large transfers, and the
// garbage V8 would otherwise keep until the next burst (an idle agent
// allocates too little to trigger a collection, and the buffers of a transfer
// or of a command's output live outside V8's heap, freed only when their
// handles are collected). Start-up and a host's hello leave garbage too: V8's
// young generation alone keeps ~2 MiB until collected.
import { runInNewContext } from 'node:vm';
import { readSlabs } from '@porthole/transport';
import { stopHashingThread } from './sha256';

/** No request in progress for this long: the agent is idle. */
export const IDLE_TRIM_MS = 5000;
/** Collections per trim (see collectGarbage): one compacting collection gave back 0.5 MiB of the 1.2, five no more than two. */
const TRIM_COLLECTIONS = 2;

let v8: typeof import('node:v8') | undefined;
let collect: (() => void) | undefined;

/**
 * Full collections that also compact. gc() is reachable only with --expose-gc, which a new context sees
 * once set. One collection frees what is dead but leaves the survivors spread over their pages; V8
 * compacts only pages it finds fragmented enough, and what one collection frees (weak handles, buffers'
 * finalisers) is freed by the next. Two compacting ones give back ~1.2 MiB more than one plain one
 * (the agent's bundle on the host after a hello: 45.1 against 46.3 MiB). Compaction is switched on only
 * here: during a transfer it would cost every full collection time.
 */
function collectGarbage(): void {
  if (!v8 || !collect) {
    // node:v8 is loaded here, not at start: with its bindings it costs an idle agent ~0.2 MiB.
    v8 = require('node:v8') as typeof import('node:v8');
    v8.setFlagsFromString('--expose-gc');
    collect = runInNewContext('gc') as () => void;
  }
  v8.setFlagsFromString('--compact-on-every-full-gc');
  try {
    for (let i = 0; i < TRIM_COLLECTIONS; i++) collect();
  } finally {
    v8.setFlagsFromString('--no-compact-on-every-full-gc');
  }
}

export class IdleTrimmer {
  private busy = 0;
  private timer?: NodeJS.Timeout;

  /** A request started. */
  begin(): void {
    this.busy++;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** A request ended: the last one arms the trim. */
  end(): void {
    if (--this.busy > 0) return;
    this.arm();
  }

  /** Something that allocated without a request (start-up, a host's hello) is over: trim once idle. */
  settle(): void {
    if (this.busy === 0) this.arm();
  }

  private arm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.trim(), IDLE_TRIM_MS);
    this.timer.unref(); // never what keeps the agent running
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
  }

  private trim(): void {
    this.timer = undefined;
    readSlabs.trim();
    // After the hashing thread has exited: until then it holds the memory it shares with this one.
    void stopHashingThread().then(collectGarbage);
  }
}
