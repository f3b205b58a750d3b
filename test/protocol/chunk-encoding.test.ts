import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { v1, encodeStreamMessage, encodeOutputParts, frameHeader, encodeFrame, withStreamId } from '@porthole/protocol';

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

  it('encodes a command\'s output the same way, for both outputs', () => {
    for (const fd of [v1.OutputStream.OUTPUT_STDOUT, v1.OutputStream.OUTPUT_STDERR]) {
      for (const size of [4096, 128 * 1024]) {
        const message = { execOutput: { fd, data: randomBytes(size) } };
        const parts = encodeStreamMessage(7, message);
        assert.equal(parts.length, 2, 'the data is sent as it is, not copied');
        assert.ok(Buffer.concat(parts).equals(Buffer.from(v1.Envelope.encode({ streamId: 7, message }).finish())), `fd ${fd} size ${size}`);
      }
    }
  });

  it('encodes output given in pieces as the one message of their bytes joined, the pieces sent as they are', () => {
    const fd = v1.OutputStream.OUTPUT_STDERR;
    for (const sizes of [[65527, 65536, 9], [3, 4093, 1], [100, 200], [70000]]) {
      const pieces = sizes.map((n) => randomBytes(n));
      const joined = Buffer.concat(pieces);
      const parts = encodeOutputParts(9, fd, pieces);
      const reference = Buffer.from(v1.Envelope.encode({ streamId: 9, message: { execOutput: { fd, data: joined } } }).finish());
      assert.ok(Buffer.concat(parts).equals(reference), `pieces ${sizes}`);
      if (joined.length >= 4096) assert.deepEqual(parts.slice(1), pieces, 'the pieces follow the prefix, not copied');
      const decoded = v1.Envelope.decode(Buffer.concat(parts)).message!.execOutput!;
      assert.equal(decoded.fd, fd);
      assert.ok(Buffer.from(decoded.data!).equals(joined));
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

describe('relayed envelopes under another stream id', () => {
  it('changes only the leading stream id, keeping the rest of the bytes (not a copy), for every id length', () => {
    const ids = [1, 127, 129, 16383, 16385, 2 ** 21 + 1, 2 ** 32 - 1];
    for (const from of ids) {
      for (const to of ids) {
        const data = randomBytes(8192);
        const payload = Buffer.concat(encodeStreamMessage(from, { chunk: { offset: 77, data } }));
        const parts = withStreamId(payload, from, to);
        const relayed = Buffer.concat(parts);
        assert.ok(relayed.equals(Buffer.from(v1.Envelope.encode({ streamId: to, message: { chunk: { offset: 77, data } } }).finish())), `${from} → ${to}`);
        assert.equal(parts[parts.length - 1].buffer, payload.buffer, 'the data is sent from where it was received');
      }
    }
  });

  it('decodes and encodes again an envelope whose stream id is not its first field, or comes twice', () => {
    const body = Buffer.from(v1.Envelope.encode({ credit: { bytes: 9 } }).finish());
    const late = Buffer.concat([body, Buffer.from([0x08, 5])]);
    const read = (payload: Buffer) => {
      const e = v1.Envelope.decode(payload);
      return [e.streamId, e.body, e.credit?.bytes];
    };
    assert.deepEqual(read(Buffer.concat(withStreamId(late, 5, 300))), [300, 'credit', 9]);
    // A leading stream id that a later one overrides (the last one counts, as protobuf says).
    const twice = Buffer.concat([Buffer.from([0x08, 3]), body, Buffer.from([0x08, 5])]);
    assert.deepEqual(read(Buffer.concat(withStreamId(twice, 5, 300))), [300, 'credit', 9]);
  });
});
