import { createRequire } from 'node:module';
// A plain require so bundlers include it (the portable fallback must always be there).
// eslint-disable-next-line @typescript-eslint/no-require-imports
const portable = require('crc-32/crc32c') as { buf(d: Uint8Array, seed?: number): number };

/** CRC32C of data, continuing from a previous result (0 to start). */
type Crc = (data: Uint8Array, previous?: number) => number;

/**
 * CRC32C: the hardware-accelerated native implementation when its prebuilt
 * addon can be loaded (host side), otherwise a pure-JS one (e.g. inside the
 * single-executable agent, whose require reaches no addons).
 */
function pick(): { crc32c: Crc; native: boolean } {
  try {
    // Inside the try: in a single executable without /proc (a chroot), __filename is
    // not absolute and createRequire itself throws.
    const native = createRequire(__filename)('@node-rs/crc32') as { crc32c(d: Uint8Array, initial?: number): number };
    const ok = native.crc32c(Buffer.from('123456789')) === 0xe3069283 && native.crc32c(Buffer.from('6789'), native.crc32c(Buffer.from('12345'))) === 0xe3069283;
    if (ok) return { crc32c: (d, prev = 0) => native.crc32c(d, prev) >>> 0, native: true };
  } catch {
    // fall through to the portable implementation
  }
  return { crc32c: (d, prev = 0) => portable.buf(d, prev | 0) >>> 0, native: false };
}

const chosen = pick();
export const crc32c: Crc = chosen.crc32c;
export const crc32cIsNative = chosen.native;
