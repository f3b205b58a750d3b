import { strict as assert } from 'node:assert';
import { ByteQueue } from '@porthole/transport';

describe('ByteQueue', () => {
  it('takes bytes from the front across pieces, as views of them, copying only when one buffer spans pieces', () => {
    const q = new ByteQueue();
    const a = Buffer.from('abcdef');
    const b = Buffer.from('ghij');
    q.push(a);
    q.push(b);
    assert.equal(q.length, 10);
    assert.equal(q.peek(3).subarray(0, 3).toString(), 'abc');
    assert.equal(q.peek(8).toString(), 'abcdefgh', 'a peek across pieces');
    const parts = q.takeParts(7);
    assert.deepEqual(parts.map(String), ['abcdef', 'g']);
    assert.equal(parts[0], a, 'a whole piece is taken as it is');
    assert.equal(parts[1].buffer, b.buffer, 'a split piece is a view');
    assert.equal(q.length, 3);
    const rest = q.take(3);
    assert.equal(rest.toString(), 'hij');
    assert.equal(rest.buffer, b.buffer, 'bytes within one piece are not copied');
    assert.equal(q.length, 0);
    q.push(Buffer.from('xy'));
    q.push(Buffer.from('z'));
    assert.equal(q.take(3).toString(), 'xyz');
    assert.deepEqual(q.takeParts(0), []);
  });
});
