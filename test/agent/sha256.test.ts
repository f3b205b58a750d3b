import { strict as assert } from 'node:assert';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, promises as fsp, renameSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OFF_THREAD_MIN, Sha256, sha256For, stopHashingThread, WrittenFile } from '@porthole/agent';

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** Feeds `data` in pieces of the given sizes, in turn, reusing one buffer for them as the agent's transfers do. */
async function feed(hash: Sha256, data: Buffer, sizes: number[]): Promise<string> {
  const piece = Buffer.alloc(Math.max(...sizes));
  for (let at = 0, i = 0; at < data.length; i++) {
    const n = Math.min(sizes[i % sizes.length], data.length - at);
    data.copy(piece, 0, at, at + n);
    await hash.update(piece.subarray(0, n));
    piece.fill(0xee); // what was given must have been hashed or copied by now
    at += n;
  }
  return hash.digest();
}

/** The first large hash once the hashing thread runs. */
async function threadHash(): Promise<Sha256> {
  for (let waited = 0; waited < 20000; waited += 50) {
    const hash = sha256For(OFF_THREAD_MIN);
    if (hash.onThread) return hash;
    await hash.digest();
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('the hashing thread did not start within 20 s');
}

/**
 * Writes `data` to a new file in pieces as the agent's injection does (each piece given to the hash, then
 * written, before the next), its hash made by `makeHash` once the file exists; then the digest.
 */
async function writeAndHash(path: string, data: Buffer, piece: number, makeHash: (file: WrittenFile) => Sha256, meanwhile?: (at: number) => void): Promise<string> {
  const handle = await fsp.open(path, 'wx');
  try {
    const st = await handle.stat();
    const file = { path: Buffer.from(path), dev: st.dev, ino: st.ino };
    const hash = makeHash(file);
    const buf = Buffer.alloc(piece);
    for (let at = 0; at < data.length; at += piece) {
      const n = data.copy(buf, 0, at, at + piece);
      await hash.update(buf.subarray(0, n));
      await handle.write(buf, 0, n, at);
      buf.fill(0xee);
      meanwhile?.(at + n);
    }
    return await hash.digest();
  } finally {
    await handle.close();
  }
}

describe('agent: sha256 of transfers', function () {
  this.timeout(30000);
  afterEach(() => stopHashingThread());

  it('hashes a small transfer on the event loop, in pieces of any size', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 5);
    const hash = sha256For(data.length);
    assert.equal(hash.onThread, false);
    assert.equal(await feed(hash, data, [100_000, 1, 700_001]), sha256(data));
  });

  it('hashes a large transfer on the event loop while the hashing thread starts, then on the thread', async () => {
    const data = randomBytes(OFF_THREAD_MIN + 3 * 1024 * 1024 + 7);
    const first = sha256For(data.length);
    assert.equal(first.onThread, false, 'the thread cannot have started yet');
    assert.equal(await feed(first, data, [512 * 1024]), sha256(data));
    const second = await threadHash();
    // Pieces larger than the thread's slots, smaller ones, and two transfers at once.
    const third = sha256For(data.length);
    assert.equal(third.onThread, true);
    const other = randomBytes(5 * 1024 * 1024);
    const [a, b] = await Promise.all([feed(second, data, [3 * 1024 * 1024 + 1, 1000, 1024 * 1024]), feed(third, other, [512 * 1024])]);
    assert.equal(a, sha256(data));
    assert.equal(b, sha256(other));
    assert.equal(await sha256For(data.length).digest(), sha256(Buffer.alloc(0)));
  });

  it('ends the thread when asked (the agent is idle) and starts it again for the next large transfer', async () => {
    await (await threadHash()).digest();
    await stopHashingThread();
    const after = sha256For(OFF_THREAD_MIN);
    assert.equal(after.onThread, false, 'a stopped thread is not used');
    await after.digest();
    const data = randomBytes(2 * 1024 * 1024);
    assert.equal(await feed(await threadHash(), data, [1024 * 1024]), sha256(data));
  });

  it('a transfer whose thread ended fails with the cause, and does not wait forever', async () => {
    const hash = await threadHash();
    await hash.update(randomBytes(1024));
    await stopHashingThread();
    await assert.rejects(hash.update(randomBytes(1024)), /hashing thread was stopped/);
    await assert.rejects(hash.digest(), /hashing thread was stopped/);
  });

  describe('of a transfer written to a file (read back by the hashing thread)', () => {
    let dir: string;
    beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'porthole-sha-')); });
    afterEach(() => rmSync(dir, { recursive: true, force: true }));
    const onThread = (file: WrittenFile) => sha256For(OFF_THREAD_MIN, undefined, file);

    it('a first large transfer is written while the thread starts, and hashed from the file once it runs', async () => {
      await stopHashingThread();
      const data = randomBytes(OFF_THREAD_MIN + 3 * 1024 * 1024 + 7);
      let first: Sha256 | undefined;
      const digest = await writeAndHash(join(dir, 'a'), data, 512 * 1024, (file) => (first = onThread(file)));
      assert.equal(first!.onThread, true, 'not hashed on the event loop');
      assert.equal(digest, sha256(data));
      // The thread runs now: the next one goes to it in slots, as the bytes come.
      const other = randomBytes(5 * 1024 * 1024 + 1);
      assert.equal(await writeAndHash(join(dir, 'b'), other, 1024 * 1024 + 3, onThread), sha256(other));
    });

    it('a file whose name comes to lead elsewhere, or that lost bytes, has no digest: the transfer fails, saying why', async () => {
      const data = randomBytes(8 * 1024 * 1024);
      const path = join(dir, 'a');
      const decoy = join(dir, 'decoy');
      writeFileSync(decoy, data);
      // Each begins while the thread starts: the bytes written before it ran are read back, the last piece at the end.
      await stopHashingThread();
      await assert.rejects(
        writeAndHash(path, data, 1024 * 1024, onThread, (at) => { if (at === 2 * 1024 * 1024) renameSync(decoy, path); }),
        /could not be read back to hash it: its name leads to another file/,
      );
      await stopHashingThread();
      await assert.rejects(
        writeAndHash(join(dir, 'b'), data, 1024 * 1024, onThread, (at) => { if (at === data.length) truncateSync(join(dir, 'b'), 100); }),
        /could not be read back to hash it: it holds fewer bytes than were written to it/,
      );
    });

    it('a thread that ends before it ran leaves the hash to the event loop, which reads the file itself', async () => {
      await stopHashingThread();
      const data = randomBytes(OFF_THREAD_MIN + 1024 * 1024);
      const digest = await writeAndHash(join(dir, 'a'), data, 1024 * 1024, (file) => {
        const hash = onThread(file);
        void stopHashingThread(); // before it could start
        return hash;
      });
      assert.equal(digest, sha256(data));
    });
  });
});
