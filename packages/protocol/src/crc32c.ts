import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
// A plain require so bundlers include it (the portable fallback must always be there).
// eslint-disable-next-line @typescript-eslint/no-require-imports
const portable = require('crc-32/crc32c') as { buf(d: Uint8Array, seed?: number): number };

/** CRC32C of data, continuing from a previous result (0 to start). */
type Crc = (data: Uint8Array, previous?: number) => number;

type Native = { crc32c(d: Uint8Array, initial?: number): number };

/**
 * Where the addon may be: this module's own node_modules (development, or the
 * JS bundle with node_modules/@node-rs beside it), else node_modules beside the
 * executable's lib/ directory, where the packages also put serialport.
 */
const NATIVE_CANDIDATES: Array<() => Native> = [
  // Inside the candidate: in a single executable without /proc (a chroot), __filename is
  // not absolute and createRequire itself throws.
  () => createRequire(__filename)('@node-rs/crc32') as Native,
  () => createRequire(join(dirname(process.execPath), 'lib', 'index.js'))('@node-rs/crc32') as Native,
];

/**
 * CRC32C: the hardware-accelerated native implementation when its prebuilt
 * addon can be loaded, otherwise a pure-JS one (4 to 10 times slower, which
 * under TCG bounds the agent's file throughput).
 */
function pick(): { crc32c: Crc; native: boolean } {
  for (const load of NATIVE_CANDIDATES) {
    try {
      const native = load();
      const ok = native.crc32c(Buffer.from('123456789')) === 0xe3069283 && native.crc32c(Buffer.from('6789'), native.crc32c(Buffer.from('12345'))) === 0xe3069283;
      if (ok) return { crc32c: (d, prev = 0) => native.crc32c(d, prev) >>> 0, native: true };
    } catch {
      // try the next place, then the portable implementation
    }
  }
  return { crc32c: (d, prev = 0) => portable.buf(d, prev | 0) >>> 0, native: false };
}

const chosen = pick();
export const crc32c: Crc = chosen.crc32c;
export const crc32cIsNative = chosen.native;
