import { strict as assert } from 'node:assert';
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { crc32c, crc32cImplementation } from '@porthole/protocol';

type Crc = (data: Uint8Array, previous?: number) => number;
const load = createRequire(__filename);
const addonPath = join(__dirname, '..', '..', 'packages', 'protocol', 'build', 'crc32c.node');
/** The build makes the addon on x86-64 Linux when Node's C headers are there (it says so when not). */
const built = existsSync(addonPath);
const cpuFlags = existsSync('/proc/cpuinfo') ? readFileSync('/proc/cpuinfo', 'utf8') : '';

describe('CRC32C', () => {
  const reference: Crc = (d, prev = 0) => (load('@node-rs/crc32') as { crc32c: Crc }).crc32c(d, prev) >>> 0;
  const portable: Crc = (d, prev = 0) => (load('crc-32/crc32c') as { buf: Crc }).buf(d, prev | 0) >>> 0;

  it('is the addon exactly when the build made it, folding where the CPU has AVX-512 VPCLMULQDQ', () => {
    assert.equal(/packages\/protocol\/native/.test(crc32cImplementation()), built, crc32cImplementation());
    const folds = ['avx512f', 'avx512vl', 'vpclmulqdq'].every((f) => new RegExp(`\\b${f}\\b`).test(cpuFlags));
    if (built) assert.equal(/VPCLMULQDQ folding/.test(crc32cImplementation()), folds, crc32cImplementation());
    const headers = join(dirname(dirname(process.execPath)), 'include', 'node', 'node_api.h');
    if (process.arch === 'x64' && process.platform === 'linux' && existsSync(headers)) assert.ok(built, `Node's headers are in ${dirname(headers)}: the build should have made the addon`);
  });

  it('gives the check value and continues from a previous result', () => {
    assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
    assert.equal(crc32c(Buffer.from('6789'), crc32c(Buffer.from('12345'))), 0xe3069283);
    assert.equal(crc32c(Buffer.alloc(0)), 0);
    assert.equal(crc32c(Buffer.alloc(0), 0xdeadbeef), 0xdeadbeef);
  });

  it('agrees with @node-rs/crc32 and the portable one at every block boundary, offset and previous value', () => {
    // The chains run over 3 × 8192 and 3 × 256 byte blocks after aligning to 8 bytes; folding takes 256
    // bytes and more, in steps of 256, then 64, then 16 bytes.
    const lengths = [1, 7, 8, 9, 255, 256, 257, 271, 272, 319, 320, 511, 512, 513, 767, 768, 769, 3 * 8192 - 1, 3 * 8192, 3 * 8192 + 1,
      3 * 8192 + 3 * 256 + 13, 128 * 1024, 300_001];
    for (let n = 256; n < 1024; n += 1 + Math.floor(Math.random() * 9)) lengths.push(n);
    for (let i = 0; i < 200; i++) lengths.push(Math.floor(Math.random() * 70_000));
    const pool = randomBytes(300_016);
    const chains = built ? (load(addonPath) as { crc32cChains: Crc }).crc32cChains : undefined;
    for (const [i, n] of lengths.entries()) {
      const offset = i % 8;
      const data = pool.subarray(offset, offset + n);
      const previous = i % 3 === 0 ? 0 : pool.readUInt32LE(i % 1000);
      const want = reference(data, previous);
      assert.equal(crc32c(data, previous), want, `length ${n} at offset ${offset}`);
      if (chains) assert.equal(chains(data, previous), want, `SSE4.2 chains, length ${n} at offset ${offset}`);
      if (n < 20_000) assert.equal(portable(data, previous), want, `portable, length ${n}`);
    }
  });

  it('the addon refuses what is not bytes with a clear error', () => {
    if (!built) return;
    const addon = load(addonPath) as { crc32c: (d: unknown, p?: unknown) => number };
    assert.throws(() => addon.crc32c('text'), /the data must be a Uint8Array/);
    assert.throws(() => addon.crc32c(Buffer.from('x'), 'seed'), /the previous CRC must be a number/);
  });
});
