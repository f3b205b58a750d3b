import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { v1, encodeStreamMessage, frameHeader, encodeFrame } from '@porthole/protocol';

describe('zero-copy chunk encoding', () => {
  it('produces exactly the bytes protobufjs produces, for every size and offset class', () => {
    const offsets = [0, 1, 127, 128, 2 ** 21, 2 ** 31 + 5, 2 ** 40 + 3, Number.MAX_SAFE_INTEGER];
    const sizes = [4096, 4097, 16383, 16384, 128 * 1024, 1024 * 1024];
    const ids = [0, 1, 127, 128, 99999];
    for (const offset of offsets) {
      for (const size of sizes) {
        for (const streamId of ids) {
          const message = { chunk: { offset, data: randomBytes(size) } };
          const fast = Buffer.concat(encodeStreamMessage(streamId, message));
          const reference = Buffer.from(v1.Envelope.encode({ streamId, message }).finish());
          assert.ok(fast.equals(reference), `offset ${offset} size ${size} stream ${streamId}`);
          const decoded = v1.Envelope.decode(fast);
          assert.equal(decoded.message?.chunk?.offset, offset);
        }
      }
    }
  });

  it('falls back to the generic encoder for other messages', () => {
    const message = { execExit: { exited: true, code: 3 } };
    assert.ok(Buffer.concat(encodeStreamMessage(5, message)).equals(Buffer.from(v1.Envelope.encode({ streamId: 5, message }).finish())));
  });

  it('frames parts with the same header as the whole payload', () => {
    const a = randomBytes(100);
    const b = randomBytes(5000);
    const whole = encodeFrame(Buffer.concat([a, b]));
    assert.ok(Buffer.concat([frameHeader([a, b]), a, b]).equals(whole));
  });
});
