// A small QMP connection over a Unix socket: what `porthole payload attach/eject`
// and the test bed need (commands and replies; events are not used).
import * as net from 'node:net';
import { QmpExecutor } from './attach';

export interface QmpConnection extends QmpExecutor {
  close(): void;
}

/** Longest reply line accepted (query-block of a VM with many drives is well below this). */
const MAX_LINE = 16 * 1024 * 1024;

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

/** Connects to a QMP Unix socket, waits for the greeting and leaves capabilities negotiation mode. */
export async function connectQmpSocket(path: string, timeoutMs = 10_000): Promise<QmpConnection> {
  const socket = net.connect(path);
  const pending = new Map<number, Pending>();
  let nextId = 1;
  let buffered = '';
  let failure: Error | undefined;
  let greeted: (() => void) | undefined;
  let greetingFailed: ((err: Error) => void) | undefined;

  const failAll = (err: Error): void => {
    failure ??= err;
    greetingFailed?.(failure);
    for (const p of pending.values()) p.reject(failure);
    pending.clear();
  };
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    buffered += chunk;
    if (buffered.length > MAX_LINE) {
      failAll(new Error(`QMP ${path}: a line longer than ${MAX_LINE} bytes from QEMU`));
      socket.destroy();
      return;
    }
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (!line) continue;
      let msg: { QMP?: unknown; id?: number; return?: unknown; error?: { class?: string; desc?: string } };
      try {
        msg = JSON.parse(line);
        if (msg === null || typeof msg !== 'object') throw new Error('not an object');
      } catch {
        failAll(new Error(`QMP ${path}: not a JSON object from QEMU`));
        socket.destroy();
        return;
      }
      if (msg.QMP !== undefined) greeted?.();
      const p = msg.id !== undefined ? pending.get(msg.id) : undefined;
      if (!p) continue; // events and stray replies
      pending.delete(msg.id!);
      if (msg.error) p.reject(new Error(`QMP error ${msg.error.class ?? ''}: ${msg.error.desc ?? 'no description'}`));
      else p.resolve(msg.return);
    }
  });
  socket.on('error', (err) => failAll(new Error(`QMP ${path}: ${err.message}`)));
  socket.on('close', () => failAll(new Error(`QMP ${path}: connection closed`)));

  const execute = (command: string, args?: Record<string, unknown>): Promise<any> => {
    if (failure) return Promise.reject(failure);
    const id = nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`QMP ${path}: no reply to ${command} within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = <T>(f: (v: T) => void) => (v: T) => {
        clearTimeout(timer);
        f(v);
      };
      pending.set(id, { resolve: done(resolve), reject: done(reject) });
      socket.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
    });
  };

  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`QMP ${path}: no greeting within ${timeoutMs} ms`)), timeoutMs);
      greeted = () => {
        clearTimeout(timer);
        resolve();
      };
      greetingFailed = (err) => {
        clearTimeout(timer);
        reject(err);
      };
    });
    greetingFailed = undefined;
    await execute('qmp_capabilities');
  } catch (err) {
    socket.destroy();
    throw err;
  }
  return { execute, close: () => socket.destroy() };
}
