// ovirt-imageio's image checksum ("blkhash"): the image is cut into blocks (4 MiB by default); the checksum is the
// hash of the concatenated per-block digests, a zero block hashed as zeros (so zero extents need no reading). The same
// algorithm as imageio's client computes locally, so `ovirt_imageio.client.checksum(file)` can be compared with the
// server's `/images/<ticket>/checksum`.
import { createHash } from 'node:crypto';
import blake2b from 'blake2b-wasm';
import type { Extent } from './backends';

export const BLOCK_SIZE = 4 * 1024 * 1024;
export const DEFAULT_ALGORITHM = 'blake2b';
/** imageio uses 32-byte digests for blake2b/blake2s (the only variable-size ones in Python's hashlib). */
const DIGEST_SIZE = 32;

/** Python hashlib names imageio accepts, and how Node computes each. */
const ALGORITHMS: Record<string, () => Hasher> = {
  // OpenSSL 3.0 has blake2b only with 64-byte digests (a 32-byte one is a different hash): the WASM build does 32.
  blake2b: () => {
    const h = blake2b(DIGEST_SIZE);
    return { update: (b) => void h.update(b), digest: () => Buffer.from(h.digest()) };
  },
  // blake2s's default digest is 32 bytes, which is OpenSSL's blake2s256.
  blake2s: () => node('blake2s256'),
  md5: () => node('md5'),
  sha1: () => node('sha1'),
  sha224: () => node('sha224'),
  sha256: () => node('sha256'),
  sha384: () => node('sha384'),
  sha512: () => node('sha512'),
  sha3_224: () => node('sha3-224'),
  sha3_256: () => node('sha3-256'),
  sha3_384: () => node('sha3-384'),
  sha3_512: () => node('sha3-512'),
};

interface Hasher {
  update(b: Uint8Array): void;
  digest(): Buffer;
}

function node(name: string): Hasher {
  const h = createHash(name);
  return { update: (b) => void h.update(b), digest: () => h.digest() };
}

/** Loads the blake2b WebAssembly module; hashing with blake2b waits for it. */
export const hashReady: Promise<void> = blake2b.ready();

export function algorithms(): string[] {
  return Object.keys(ALGORITHMS).sort();
}

export function isAlgorithm(name: string): boolean {
  return Object.prototype.hasOwnProperty.call(ALGORITHMS, name);
}

export function hasher(algorithm: string): Hasher {
  return ALGORITHMS[algorithm]();
}

/** One block to hash: `zero` blocks are hashed as zeros without reading them. */
export interface Block {
  start: number;
  length: number;
  zero: boolean;
}

/**
 * imageio's split: extents into blocks of `blockSize` (the last may be shorter); a block that mixes data and zeros
 * is a data block.
 */
export function* blocks(extents: Iterable<Pick<Extent, 'start' | 'length' | 'zero'>>, blockSize: number): Generator<Block> {
  let partial: Block | undefined;
  for (const e of extents) {
    const cur = { start: e.start, length: e.length, zero: e.zero };
    if (partial) {
      const stolen = Math.min(blockSize - partial.length, cur.length);
      cur.start += stolen;
      cur.length -= stolen;
      partial.length += stolen;
      partial.zero = partial.zero && cur.zero;
      if (partial.length < blockSize) continue;
      yield partial;
      partial = undefined;
    }
    while (cur.length >= blockSize) {
      yield { start: cur.start, length: blockSize, zero: cur.zero };
      cur.start += blockSize;
      cur.length -= blockSize;
    }
    if (cur.length) partial = cur;
  }
  if (partial) yield partial;
}

/** The block hash: feed blocks in order with `data(bytes)` or `zero(length)`. */
export class BlockHash {
  private readonly outer: Hasher;
  private readonly zeroDigest: Buffer;

  constructor(readonly algorithm: string, readonly blockSize: number) {
    this.outer = hasher(algorithm);
    this.zeroDigest = this.digestOf(Buffer.alloc(blockSize));
  }

  private digestOf(b: Uint8Array): Buffer {
    const h = hasher(this.algorithm);
    h.update(b);
    return h.digest();
  }

  data(block: Uint8Array): void {
    // imageio detects zeros in data blocks too; the digest of zeros is the same either way.
    this.outer.update(this.digestOf(block));
  }

  zero(length: number): void {
    this.outer.update(length === this.blockSize ? this.zeroDigest : this.digestOf(Buffer.alloc(length)));
  }

  hexdigest(): string {
    return this.outer.digest().toString('hex');
  }
}
