import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { v1, Session, Stream, bytesOf } from '@porthole/protocol';
import { readSlabs } from '@porthole/transport';
import { socketPair } from '../helpers/socket-pair';

const MiB = 1024 * 1024;
/** What the agent sends; each stream's request names the range (fileRead offset/length). */
const source = randomBytes(48 * MiB);

/**
 * Agent side: sends the requested range of `source` in chunks of 64 to 128 KiB (frames that size arrive as
 * views of the read slab, not copies; their varying size makes them cross slab ends anywhere).
 */
async function sendRange(stream: Stream): Promise<void> {
  const { offset, length } = stream.open.fileRead!;
  let at = Number(offset);
  const end = at + Number(length);
  try {
    for (let i = 1; at < end; i++) {
      const n = Math.min(end - at, 64 * 1024 + ((i * 7919) % (64 * 1024)));
      await stream.send({ chunk: { offset: at, data: source.subarray(at, at + n) } });
      at += n;
    }
    stream.end();
  } catch {
    // reset
  }
}

/**
 * The broker side reads from pooled slabs (it dialed the socket); the agent
 * side writes. Slab counts are the process-wide pool's, so each test looks at
 * what changed while it ran.
 */
async function pair() {
  const p = await socketPair();
  new Session(p.guest, { role: 'agent', hello: { softwareVersion: 'test-agent' }, onStream: (s) => void sendRange(s) });
  const broker = new Session(p.host, { role: 'broker', hello: { softwareVersion: 'test-broker' }, keepaliveIntervalMs: 0 });
  await broker.ready(2000);
  return { broker, cleanup: p.cleanup };
}

function expectIntact(m: v1.StreamMessage): number {
  const data = bytesOf(m.chunk!.data);
  const at = Number(m.chunk!.offset);
  assert.ok(data.equals(source.subarray(at, at + data.length)), `chunk at ${at} (${data.length} bytes) intact`);
  return data.length;
}

describe('lent reads and the read slab pool', () => {
  const cleanups: Array<() => void> = [];
  afterEach(() => cleanups.splice(0).forEach((c) => c()));

  it('a lent reader gets every chunk intact while the read slabs are reused', async () => {
    const p = await pair();
    cleanups.push(p.cleanup);
    const before = { ...readSlabs.stats };
    const s = p.broker.openStream({ fileRead: { offset: 0, length: 40 * MiB } });
    s.end();
    let bytes = 0;
    for await (const m of s.lent()) bytes += expectIntact(m);
    assert.equal(bytes, 40 * MiB);
    const reused = readSlabs.stats.reused - before.reused;
    const created = readSlabs.stats.created - before.created;
    assert.ok(reused >= 5, `slabs reused: ${reused}`);
    assert.ok(created <= 3, `slabs created: ${created}`);
  });

  it('messages taken with read() keep their bytes while later input fills reused slabs', async () => {
    const p = await pair();
    cleanups.push(p.cleanup);
    const kept: v1.StreamMessage[] = [];
    const first = p.broker.openStream({ fileRead: { offset: 0, length: 8 * MiB } });
    first.end();
    for await (const m of first) kept.push(m);
    const before = readSlabs.stats.reused;
    const second = p.broker.openStream({ fileRead: { offset: 8 * MiB, length: 40 * MiB } });
    second.end();
    for await (const m of second.lent()) expectIntact(m);
    assert.ok(readSlabs.stats.reused - before >= 5, 'slabs were reused meanwhile');
    let bytes = 0;
    for (const m of kept) bytes += expectIntact(m);
    assert.equal(bytes, 8 * MiB);
  });

  it('a lent message still in use when its stream is reset keeps its bytes', async () => {
    const p = await pair();
    cleanups.push(p.cleanup);
    const first = p.broker.openStream({ fileRead: { offset: 0, length: 8 * MiB } });
    const held = await first.readLent();
    assert.ok(held?.chunk);
    first.reset(new Error('given up'));
    const second = p.broker.openStream({ fileRead: { offset: 8 * MiB, length: 40 * MiB } });
    second.end();
    const before = readSlabs.stats.reused;
    for await (const m of second.lent()) expectIntact(m);
    assert.ok(readSlabs.stats.reused - before >= 5, 'slabs were reused meanwhile');
    expectIntact(held);
  });
});
