// Builtin modules an idle agent does without, loaded at their first use. A builtin required at start
// stays in every idle agent's memory with all it pulls in: node:crypto and node:child_process together
// are ~1.5 MiB of an agent that waits for its first request (docs/BENCHMARKS.md, the agent's idle memory).
import { promisify } from 'node:util';

export const crypto = (): typeof import('node:crypto') => require('node:crypto');
export const childProcess = (): typeof import('node:child_process') => require('node:child_process');

/** child_process.execFile as a promise (rejects with the exit code and stderr when the program fails). */
export const execFileAsync = (file: string, args: string[], options: import('node:child_process').ExecFileOptions = {}) =>
  promisify(childProcess().execFile)(file, args, options);
