import { strict as assert } from 'node:assert';
import {
  v1, Session, Stream, encodeFrame, frameHeader, FrameDecoder, FRAME_FLAG_NO_PAYLOAD_CRC, FRAME_HEADER_SIZE, PROTOCOL_VERSION,
} from '@porthole/protocol';
import { ChannelBase } from '@porthole/transport';
import { socketPair } from '../helpers/socket-pair';

/** A byte channel that records what is written; `reliable` as given (a serial line says false). */
class RecordingChannel extends ChannelBase {
  readonly kind = 'bytes' as const;
  readonly description = 'recording';
  readonly written: Buffer[] = [];
  constructor(override readonly reliable: boolean) {
    super();
  }
  write(data: Buffer): boolean {
    this.written.push(data);
    return true;
  }
  close(): void {
    this.markClosed();
  }
}

const frameOf = (envelope: v1.Envelope.$Properties) => encodeFrame(v1.Envelope.encode(envelope).finish());

/** A broker's hello as a peer of this version (true), or of one before the field (undefined), sends it. */
function peerHello(payloadCrcOptional?: boolean): Buffer {
  return frameOf({
    hello: { protocolVersion: PROTOCOL_VERSION, role: v1.Role.ROLE_BROKER, softwareVersion: 'peer', instanceId: 'p1', payloadCrcOptional },
  });
}

/** The decoded hellos and flags of what a session wrote. */
function framesOf(written: Buffer[]): Array<{ flags: number; crc: number; envelope: v1.Envelope }> {
  const out: Array<{ flags: number; crc: number; envelope: v1.Envelope }> = [];
  for (const f of written) {
    out.push({ flags: f[5], crc: f.readUInt32BE(10), envelope: v1.Envelope.decode(f.subarray(FRAME_HEADER_SIZE)) });
  }
  return out;
}

function agentOn(channel: RecordingChannel): Session {
  return new Session(channel, { role: 'agent', hello: { softwareVersion: 'agent' }, onStream: () => undefined });
}

describe('payload CRC32C negotiated in the hello', () => {
  it('is left out over a channel that cannot corrupt, once both hellos agreed: frames carry the flag', async () => {
    const ch = new RecordingChannel(true);
    const agent = agentOn(ch);
    const [hello] = framesOf(ch.written);
    assert.equal(hello.envelope.hello!.payloadCrcOptional, true);
    assert.equal(hello.flags, 0, 'before the peer agreed, frames are checked');
    ch.emit('data', peerHello(true));
    await agent.ready(1000);
    const reply = framesOf(ch.written)[1];
    assert.ok(reply.envelope.hello!.reply);
    assert.equal(reply.flags, FRAME_FLAG_NO_PAYLOAD_CRC);
    assert.equal(reply.crc, 0);
    // After the peer went away, the next peer may be an old one: checked again until its hello.
    ch.emit('discontinuity');
    ch.emit('data', peerHello(undefined));
    const after = framesOf(ch.written).at(-1)!;
    assert.equal(after.flags, 0);
    agent.close();
  });

  it('is kept for a peer that does not know the field (an older version)', async () => {
    const ch = new RecordingChannel(true);
    const agent = agentOn(ch);
    ch.emit('data', peerHello(undefined));
    await agent.ready(1000);
    const reply = framesOf(ch.written)[1];
    assert.equal(reply.flags, 0);
    assert.notEqual(reply.crc, 0);
    agent.close();
  });

  it('is kept on a serial line even when the peer offers to leave it out', async () => {
    const ch = new RecordingChannel(false);
    const agent = agentOn(ch);
    ch.emit('data', peerHello(true));
    await agent.ready(1000);
    const frames = framesOf(ch.written);
    assert.equal(frames[0].envelope.hello!.payloadCrcOptional, false);
    assert.deepEqual(frames.map((f) => f.flags), [0, 0]);
    agent.close();
  });

  it('an unchecked frame is refused where the channel can corrupt; a checked one still detects a bad byte and recovers', () => {
    const got: string[] = [];
    const reasons: string[] = [];
    const d = new FrameDecoder((p) => got.push(p.toString()), { requirePayloadCrc: true, onGarbage: (r) => reasons.push(r) });
    const payload = Buffer.from('unchecked');
    d.push(Buffer.concat([frameHeader([payload], false), payload]));
    const corrupt = encodeFrame(Buffer.from('corrupted payload'));
    corrupt[FRAME_HEADER_SIZE + 3] ^= 0x40;
    d.push(corrupt);
    d.push(encodeFrame(Buffer.from('good')));
    assert.deepEqual(got, ['good']);
    assert.ok(reasons.some((r) => /without a payload checksum/.test(r)), reasons.join('; '));
    assert.ok(reasons.includes('payload checksum mismatch'), reasons.join('; '));
  });

  it('a decoder takes unchecked and checked frames mixed, with no state (the flag says which)', () => {
    const got: string[] = [];
    const d = new FrameDecoder((p) => got.push(p.toString()));
    const a = Buffer.from('a'.repeat(100_000));
    d.push(Buffer.concat([frameHeader([a], false), a, encodeFrame(Buffer.from('b')), frameHeader([Buffer.from('c')], false), Buffer.from('c')]));
    assert.deepEqual(got.map((s) => s[0]), ['a', 'b', 'c']);
  });

  it('end to end over a Unix socket pair: both sides new, data moves unchecked and intact', async () => {
    const p = await socketPair();
    const echo = async (s: Stream) => {
      for await (const m of s) if (m.body === 'chunk') await s.send({ chunk: m.chunk });
      s.end();
    };
    const agent = new Session(p.guest, { role: 'agent', hello: { softwareVersion: 'a' }, onStream: (s) => void echo(s).catch(() => undefined) });
    const broker = new Session(p.host, { role: 'broker', hello: { softwareVersion: 'b' }, keepaliveIntervalMs: 0 });
    try {
      assert.equal((await broker.ready(2000)).payloadCrcOptional, true);
      const frames: Buffer[] = [];
      p.guest.on('data', (c) => frames.push(Buffer.from(c)));
      const s = broker.openStream({ info: {} });
      const data = Buffer.alloc(300_000, 7);
      await s.send({ chunk: { data } });
      s.end();
      let back = 0;
      for await (const m of s) if (m.body === 'chunk') back += m.chunk!.data!.length;
      assert.equal(back, data.length);
      const all = Buffer.concat(frames);
      const bulk: number[] = [];
      for (let off = 0; off < all.length; off += FRAME_HEADER_SIZE + all.readUInt32BE(off + 6)) {
        if (all.readUInt32BE(off + 6) > 100_000) bulk.push(all[off + 5]);
      }
      assert.deepEqual(bulk, [FRAME_FLAG_NO_PAYLOAD_CRC], 'the broker sent the data unchecked');
    } finally {
      agent.close();
      broker.close();
      p.cleanup();
    }
  });
});
