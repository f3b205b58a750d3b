import { strict as assert } from 'node:assert';
import { SlabPool, slabOf } from '@porthole/transport';

describe('read slab pool', () => {
  it('gives a slab back out once its last holder released it, and never a pinned one', () => {
    const pool = new SlabPool(64 * 1024, 2);
    const a = pool.take();
    assert.equal(slabOf(a.bytes.subarray(100, 200)), a, 'a view finds its slab');
    assert.equal(slabOf(Buffer.alloc(10)), undefined);
    a.hold(); // e.g. a queued message
    a.release(); // the reader moved on
    const b = pool.take();
    assert.notEqual(b, a, 'a slab still held is not handed out again');
    a.release(); // the message was read
    assert.equal(pool.take(), a, 'released: reused');
    assert.deepEqual(pool.stats, { created: 2, reused: 1 });
    b.releaseKept();
    assert.notEqual(pool.take(), b, 'a pinned slab is never reused');
  });

  it('keeps at most its limit of free slabs', () => {
    const pool = new SlabPool(1024, 2);
    const slabs = [pool.take(), pool.take(), pool.take()];
    for (const s of slabs) s.release();
    pool.take();
    pool.take();
    const third = pool.take();
    assert.ok(!slabs.includes(third), 'the third released slab was left to the garbage collector');
    assert.deepEqual(pool.stats, { created: 4, reused: 2 });
  });
});
