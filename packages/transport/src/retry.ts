import { setTimeout as sleep } from 'node:timers/promises';
import { Channel, Connector } from './channel';

export interface RetryOptions {
  /** Give up after this long (default: never). */
  timeoutMs?: number;
  initialDelayMs?: number;
  maxDelayMs?: number;
  signal?: AbortSignal;
  /** Called before each wait, with the error that caused it. */
  onRetry?: (error: Error, attempt: number, delayMs: number) => void;
}

/**
 * Connect, retrying with exponential backoff (the VM may still be booting or
 * restarting). The last error is kept as the rejection cause so the caller can
 * say *why* it gave up. An error with `retryable: false` is thrown at once.
 */
export async function connectWithRetry(connector: Connector, options: RetryOptions = {}): Promise<Channel> {
  const { timeoutMs = Infinity, initialDelayMs = 50, maxDelayMs = 2000, signal, onRetry } = options;
  const deadline = Date.now() + timeoutMs;
  let delay = initialDelayMs;
  for (let attempt = 1; ; attempt++) {
    signal?.throwIfAborted();
    try {
      return await connector.connect(signal);
    } catch (err) {
      const error = err as Error & { retryable?: boolean };
      // A connector that got a definite answer (a broker daemon that already waited for the VM) says so.
      if (signal?.aborted || error.retryable === false) throw error;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`${connector.description}: gave up after ${attempt} attempts: ${error.message}`, { cause: error });
      }
      const wait = Math.min(delay, left);
      onRetry?.(error, attempt, wait);
      await sleep(wait, undefined, { signal });
      delay = Math.min(delay * 2, maxDelayMs);
    }
  }
}
