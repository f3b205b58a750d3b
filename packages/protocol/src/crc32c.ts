import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
// A plain require so bundlers include it (the portable fallback must always be there).
// eslint-disable-next-line @typescript-eslint/no-require-imports
const portable = require('crc-32/crc32c') as { buf(d: Uint8Array, seed?: number): number };

/** A CRC32C function: of data, continuing from a previous result. */
type Crc = (data: Uint8Array, previous?: number) => number;

type Native = { crc32c(d: Uint8Array, initial?: number): number; implementation?: string };

/**
 * Native implementations, fastest first: this package's addon (carry-less
 * multiplication folding on AVX-512 CPUs, about 10 times @node-rs/crc32 on one
 * core, otherwise three interleaved SSE4.2 chains, about 4 times; built on
 * x86-64 Linux hosts into build/), then @node-rs/crc32 from this module's own
 * node_modules (development, or the JS bundle with node_modules/@node-rs
 * beside it), then from node_modules beside the executable's lib/ directory,
 * where the packages also put serialport. The agent's bundle finds no build/
 * beside it and uses @node-rs/crc32: under TCG the addon's ways gain nothing.
 */
const NATIVE_CANDIDATES: Array<{ name: string; load: () => Native }> = [
  // Inside each candidate: in a single executable without /proc (a chroot), __filename is
  // not absolute and createRequire itself throws.
  { name: 'packages/protocol/native', load: () => createRequire(__filename)(join(__dirname, '..', 'build', 'crc32c.node')) as Native },
  { name: 'SSE4.2 via @node-rs/crc32', load: () => createRequire(__filename)('@node-rs/crc32') as Native },
  { name: 'SSE4.2 via @node-rs/crc32', load: () => createRequire(join(dirname(process.execPath), 'lib', 'index.js'))('@node-rs/crc32') as Native },
];

/**
 * CRC32C: the first native implementation that loads and gives the right
 * answers, otherwise a pure-JS one (4 to 10 times slower than @node-rs/crc32,
 * which under TCG bounds the agent's file throughput).
 */
function pick(): { crc32c: Crc; native: boolean; name: string } {
  for (const candidate of NATIVE_CANDIDATES) {
    try {
      const native = candidate.load();
      const ok = native.crc32c(Buffer.from('123456789')) === 0xe3069283 && native.crc32c(Buffer.from('6789'), native.crc32c(Buffer.from('12345'))) === 0xe3069283;
      const name = native.implementation ? `${native.implementation} (${candidate.name})` : candidate.name;
      if (ok) return { crc32c: (d, prev = 0) => native.crc32c(d, prev) >>> 0, native: true, name };
    } catch {
      // try the next place, then the portable implementation
    }
  }
  return { crc32c: (d, prev = 0) => portable.buf(d, prev | 0) >>> 0, native: false, name: 'pure JS (crc-32)' };
}

/**
 * Control frames and headers are small, and checksumming them needs no addon: the first one is
 * loaded with the first bulk frame, so an agent that has only answered hellos and commands never
 * maps it (about 3.5 MiB of its RSS). The two give the same values, so a running CRC may switch.
 */
const NATIVE_FROM_BYTES = 4096;
let chosen: ReturnType<typeof pick> | undefined;
const listeners: Array<(implementation: string, native: boolean) => void> = [];
function choose(): ReturnType<typeof pick> {
  if (chosen) return chosen;
  chosen = pick();
  for (const listener of listeners.splice(0)) listener(chosen.name, chosen.native);
  return chosen;
}

/** CRC32C of data, continuing from a previous result (0 to start). */
export const crc32c: Crc = (d, prev = 0) =>
  chosen ? chosen.crc32c(d, prev) : d.length < NATIVE_FROM_BYTES ? portable.buf(d, prev | 0) >>> 0 : choose().crc32c(d, prev);
/** Which implementation `crc32c` is, for logs and benchmark notes (picks it now if no bulk frame has yet). */
export const crc32cImplementation = (): string => choose().name;
/** Calls `listener` once the implementation is picked (at once if it already is). */
export function whenCrc32cChosen(listener: (implementation: string, native: boolean) => void): void {
  if (chosen) listener(chosen.name, chosen.native);
  else listeners.push(listener);
}
