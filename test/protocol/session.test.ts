import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import {
  v1, Session, SessionLogger, Stream, PortholeError, encodeFrame, FrameDecoder, PROTOCOL_VERSION, chunkSizeFor, CHUNK_SIZE, MAX_CHUNK_SIZE,
  DEFAULT_MAX_FRAME_SIZE, DEFAULT_STREAM_WINDOW, SLOW_PORT_STREAM_WINDOW, SERIAL_STREAM_WINDOW,
} from '@porthole/protocol';
import { ChannelBase } from '@porthole/transport';
import { socketPair } from '../helpers/socket-pair';

const agentHello = { softwareVersion: 'test-agent', capabilities: [v1.Capability.CAPABILITY_EXEC] };
const brokerHello = { softwareVersion: 'test-broker' };

/** An agent-side handler: echoes every chunk back, then ends. */
async function echo(stream: Stream): Promise<void> {
  try {
    for await (const m of stream) {
      if (m.body === 'chunk') await stream.send({ chunk: m.chunk });
    }
    stream.end();
  } catch {
    // reset by the peer
  }
}

async function pair(onStream: (s: Stream) => void = (s) => void echo(s), window?: number) {
  const p = await socketPair();
  const agent = new Session(p.guest, { role: 'agent', hello: agentHello, onStream, streamWindow: window });
  const broker = new Session(p.host, { role: 'broker', hello: brokerHello, streamWindow: window, keepaliveIntervalMs: 0 });
  return { ...p, agent, broker };
}

/** A byte channel that records what is written, says "full" on demand, and whether it was asked to stop reading. */
class RecordingChannel extends ChannelBase {
  readonly kind = 'bytes' as const;
  readonly description = 'recording';
  full = false;
  paused = false;
  readonly written: Buffer[] = [];
  write(data: Buffer): boolean {
    return this.writeParts([data]);
  }
  writeParts(parts: readonly Buffer[]): boolean {
    this.written.push(Buffer.concat(parts));
    return !this.full;
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
  }
  close(): void {
    this.markClosed();
  }
}

const frameOf = (envelope: v1.Envelope.$Properties) => encodeFrame(v1.Envelope.encode(envelope).finish());

describe('session', () => {
  const cleanups: Array<() => void> = [];
  afterEach(() => cleanups.splice(0).forEach((c) => c()));

  it('handshakes both ways and exchanges capabilities', async () => {
    const p = await pair();
    cleanups.push(p.cleanup);
    const hello = await p.broker.ready(2000);
    assert.equal(hello.softwareVersion, 'test-agent');
    assert.equal(hello.role, v1.Role.ROLE_AGENT);
    assert.deepEqual(hello.capabilities, [v1.Capability.CAPABILITY_EXEC]);
    assert.equal((await p.agent.ready(2000)).softwareVersion, 'test-broker');
    assert.ok((await p.broker.ping()) >= 0);
  });

  it('names the cause when no agent answers', async () => {
    const p = await socketPair();
    cleanups.push(p.cleanup);
    const broker = new Session(p.host, { role: 'broker', hello: brokerHello, keepaliveIntervalMs: 0 });
    await assert.rejects(broker.ready(300), (e: PortholeError) =>
      e.code === v1.ErrorCode.ERROR_CODE_TIMEOUT && /no agent answered .* within 300 ms/.test(e.message));
  });

  it('reports a protocol version mismatch', async () => {
    const p = await socketPair();
    cleanups.push(p.cleanup);
    const broker = new Session(p.host, { role: 'broker', hello: brokerHello, keepaliveIntervalMs: 0 });
    p.guest.write(encodeFrame(v1.Envelope.encode({ hello: { protocolVersion: PROTOCOL_VERSION + 98, softwareVersion: 'future', instanceId: 'x' } }).finish()));
    await assert.rejects(broker.ready(2000), (e: PortholeError) =>
      e.code === v1.ErrorCode.ERROR_CODE_PROTOCOL && /version mismatch.*v99/.test(e.message));
  });

  it('ignores a hello reply that answers another instance (left in the channel for the host before it)', async () => {
    const p = await socketPair();
    cleanups.push(p.cleanup);
    const broker = new Session(p.host, { role: 'broker', hello: brokerHello, keepaliveIntervalMs: 0 });
    const agentHello = { protocolVersion: PROTOCOL_VERSION, role: v1.Role.ROLE_AGENT, instanceId: 'agent-1', reply: true };
    p.guest.write(frameOf({ hello: { ...agentHello, softwareVersion: 'an old answer', answersInstanceId: 'an-earlier-host' } }));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(broker.isReady, false, 'an answer to another host is not ours');
    p.guest.write(frameOf({ hello: { ...agentHello, softwareVersion: 'our answer', answersInstanceId: broker.instanceId } }));
    assert.equal((await broker.ready(2000)).softwareVersion, 'our answer');
  });

  it('names the instance it answers in its hello reply', async () => {
    const p = await pair();
    cleanups.push(p.cleanup);
    await p.broker.ready(2000);
    await p.broker.ping(); // the agent's reply to our hello comes before its pong
    assert.equal(p.broker.peerHello!.reply, true);
    assert.equal(p.broker.peerHello!.answersInstanceId, p.broker.instanceId);
  });

  it('refuses a message larger than the peer\'s whole window at once, naming both sizes', async () => {
    const p = await pair(undefined, 128 * 1024);
    cleanups.push(p.cleanup);
    await p.broker.ready();
    const stream = p.broker.openStream({ info: {} });
    await assert.rejects(stream.send({ chunk: { data: randomBytes(200 * 1024) } }), (e: PortholeError) =>
      e.code === v1.ErrorCode.ERROR_CODE_INVALID_ARGUMENT && /message of \d+ bytes is larger than the peer's window of 131072 bytes/.test(e.message));
    await stream.send({ chunk: { data: randomBytes(64 * 1024) } }); // the stream is still usable
  });

  it('sends data in the largest chunks of which two fit the peer\'s window and one its frames', async () => {
    const KiB = 1024;
    assert.equal(chunkSizeFor(SLOW_PORT_STREAM_WINDOW, DEFAULT_MAX_FRAME_SIZE), 512 * KiB); // the agent on virtio-serial
    assert.equal(chunkSizeFor(SERIAL_STREAM_WINDOW, DEFAULT_MAX_FRAME_SIZE), CHUNK_SIZE); // 512 KiB exactly: two 256 KiB messages and their envelopes do not fit
    assert.equal(chunkSizeFor(DEFAULT_STREAM_WINDOW, DEFAULT_MAX_FRAME_SIZE), MAX_CHUNK_SIZE); // a host reading a file back
    assert.equal(chunkSizeFor(64 * MAX_CHUNK_SIZE, 64 * MAX_CHUNK_SIZE), MAX_CHUNK_SIZE);
    assert.equal(chunkSizeFor(DEFAULT_STREAM_WINDOW, 300 * KiB), 256 * KiB); // a peer with small frames
    assert.equal(chunkSizeFor(64 * KiB, DEFAULT_MAX_FRAME_SIZE), CHUNK_SIZE); // never below CHUNK_SIZE (the window check names the cause)
    // Each side takes the size from the other's hello.
    const p = await pair(undefined, SLOW_PORT_STREAM_WINDOW);
    cleanups.push(p.cleanup);
    await p.broker.ready();
    assert.equal(p.broker.openStream({ info: {} }).chunkSize, 512 * KiB);
  });

  it('carries a 32 MiB stream both ways intact with a small window', async function () {
    this.timeout(30000);
    const p = await pair(undefined, 256 * 1024);
    cleanups.push(p.cleanup);
    await p.broker.ready();
    const stream = p.broker.openStream({ info: {} });
    const data = randomBytes(32 * 1024 * 1024);
    const received: Buffer[] = [];
    const reading = (async () => {
      for await (const m of stream) received.push(Buffer.from(m.chunk!.data!));
    })();
    for (let off = 0; off < data.length; off += 64 * 1024) {
      await stream.send({ chunk: { offset: off, data: data.subarray(off, off + 64 * 1024) } });
    }
    stream.end();
    await reading;
    await stream.closed;
    assert.ok(Buffer.concat(received).equals(data));
    assert.equal(p.broker.openStreams, 0);
  });

  it('never sends past the credit a slow reader granted', async () => {
    const window = 128 * 1024;
    let agentStream: Stream | undefined;
    const p = await pair((s) => { agentStream = s; }, window);
    cleanups.push(p.cleanup);
    await p.broker.ready();
    const stream = p.broker.openStream({ info: {} });
    let sent = 0;
    const chunk = randomBytes(16 * 1024);
    const sending = (async () => {
      for (let i = 0; i < 64; i++) {
        await stream.send({ chunk: { data: chunk } });
        sent += chunk.length;
      }
    })();
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(sent <= window, `sent ${sent} > window ${window} while nobody read`);
    assert.ok(sent >= window / 2, `sent only ${sent}`);
    // Reading releases credit and the sender finishes.
    let got = 0;
    while (got < 64) {
      await agentStream!.read();
      got++;
    }
    await sending;
    assert.equal(sent, 64 * chunk.length);
  });

  it('resets a stream whose peer sends past the credit it was granted, naming the overrun, and holds nothing more', async () => {
    const window = 64 * 1024;
    let agentStream: Stream | undefined;
    const p = await pair((s) => { agentStream = s; }, window);
    cleanups.push(p.cleanup);
    await p.broker.ready();
    const stream = p.broker.openStream({ exec: { argv: [Buffer.from('sleep')] } });
    const reset = stream.read().then(() => undefined, (e: PortholeError) => e);
    // A peer that ignores credit: 1 MiB of chunks written straight to the channel, nobody reading on the far side.
    const chunk = randomBytes(16 * 1024);
    for (let i = 0; i < 64; i++) p.host.write(encodeFrame(v1.Envelope.encode({ streamId: stream.id, message: { chunk: { offset: i * chunk.length, data: chunk } } }).finish()));
    const e = await reset;
    assert.ok(e instanceof PortholeError, 'the stream was reset');
    assert.equal(e.codeName, 'PROTOCOL');
    assert.match(e.message, /sent \d+ bytes past the \d+ bytes of credit granted/);
    await assert.rejects(agentStream!.closed, (err: PortholeError) => err.codeName === 'PROTOCOL');
    assert.equal(p.agent.openStreams, 0, 'the agent forgot the stream');
  });

  it('a bulk transfer does not starve a small request', async function () {
    this.timeout(60000);
    const p = await pair((s) => {
      if (s.open.request === 'info') {
        void s.send({ info: {} }).then(() => s.end());
        void s.read();
      } else void echo(s);
    });
    cleanups.push(p.cleanup);
    await p.broker.ready();
    const roundTrip = async () => {
      const t = performance.now();
      const s = p.broker.openStream({ info: {} });
      s.end();
      await s.read();
      return performance.now() - t;
    };
    const idle: number[] = [];
    for (let i = 0; i < 20; i++) idle.push(await roundTrip());
    let bulkDone = false;
    const bulk = (async () => {
      const s = p.broker.openStream({ fileWrite: {} });
      const drain = (async () => { for await (const _ of s) { /* discard */ } })();
      const chunk = randomBytes(128 * 1024);
      for (let i = 0; i < 1024; i++) await s.send({ chunk: { data: chunk } });
      s.end();
      await drain;
      bulkDone = true;
    })();
    await new Promise((r) => setTimeout(r, 50));
    const loaded: number[] = [];
    for (let i = 0; i < 20 && !bulkDone; i++) loaded.push(await roundTrip());
    const loadedCount = loaded.length;
    await bulk;
    const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
    console.log(`      small request: idle median ${median(idle).toFixed(2)} ms, under bulk median ${median(loaded).toFixed(2)} ms (${loadedCount} samples)`);
    assert.ok(loadedCount >= 5, 'small requests completed while the bulk transfer was running');
    assert.ok(median(loaded) < 100, `small request under load took ${median(loaded)} ms`);
  });

  it('a new hello from a restarted peer fails requests in flight with SESSION_RESET', async () => {
    const p = await pair(() => { /* never answers */ });
    cleanups.push(p.cleanup);
    await p.broker.ready();
    await p.broker.ping(); // both handshake replies are through
    const resets: PortholeError[] = [];
    p.broker.on('reset', (e) => resets.push(e));
    const stream = p.broker.openStream({ exec: { argv: [Buffer.from('sleep')] } });
    const pending = stream.read();
    // The agent process restarts: a new instance says hello on the same channel.
    p.guest.write(encodeFrame(v1.Envelope.encode({ hello: { protocolVersion: PROTOCOL_VERSION, role: v1.Role.ROLE_AGENT, softwareVersion: 'restarted', instanceId: 'new-instance' } }).finish()));
    await assert.rejects(pending, (e: PortholeError) => e.code === v1.ErrorCode.ERROR_CODE_SESSION_RESET && /restarted/.test(e.message));
    assert.equal(resets.length, 1);
    assert.equal(p.broker.peerHello?.softwareVersion, 'restarted');
    assert.ok(p.broker.isReady);
  });

  it('a reset stream carries the error code, rule and message to the other side', async () => {
    const p = await pair((s) => s.reset(new PortholeError(v1.ErrorCode.ERROR_CODE_POLICY_DENIED, 'exec is disabled by the guest\'s owner', { rule: 'exec.enabled = false' })));
    cleanups.push(p.cleanup);
    await p.broker.ready();
    const s = p.broker.openStream({ exec: {} });
    await assert.rejects(s.read(), (e: PortholeError) => e.codeName === 'POLICY_DENIED' && e.rule === 'exec.enabled = false');
    await assert.rejects(s.send({ cancel: {} }), (e: PortholeError) => e.codeName === 'POLICY_DENIED');
  });

  it('a lost channel fails streams with a clear cause', async () => {
    const p = await pair(() => undefined);
    cleanups.push(p.cleanup);
    await p.broker.ready();
    const s = p.broker.openStream({ exec: {} });
    p.guest.close();
    await assert.rejects(s.read(), (e: PortholeError) => e.code === v1.ErrorCode.ERROR_CODE_SESSION_RESET && /connection lost/.test(e.message));
    assert.ok(p.broker.closed);
  });

  it('tells abort listeners once on a reset, at once when added late, and never after a normal finish', async () => {
    const agentStreams: Stream[] = [];
    const p = await pair((s) => agentStreams.push(s));
    cleanups.push(p.cleanup);
    await p.broker.ready();
    const waitForStream = async (n: number) => { while (agentStreams.length < n) await new Promise((r) => setTimeout(r, 5)); return agentStreams[n - 1]; };

    // Reset by the host: each listener once, with the host's reason; a removed one not at all.
    const toReset = p.broker.openStream({ exec: {} });
    const reset = await waitForStream(1);
    const told: string[] = [];
    reset.onAbort((e) => told.push(`a ${e.codeName} ${e.message}`));
    const remove = reset.onAbort(() => told.push('removed'));
    remove();
    toReset.reset(new PortholeError(v1.ErrorCode.ERROR_CODE_CANCELLED, 'host gave up'));
    await reset.closed.catch(() => undefined);
    assert.deepEqual(told, ['a CANCELLED host gave up']);
    reset.onAbort((e) => told.push(`late ${e.codeName}`));
    assert.deepEqual(told, ['a CANCELLED host gave up', 'late CANCELLED']);

    // Finished normally: never told.
    const host = p.broker.openStream({ exec: {} });
    const done = await waitForStream(2);
    let finishedTold = false;
    done.onAbort(() => { finishedTold = true; });
    host.end();
    assert.equal(await done.read(), null);
    done.end();
    assert.equal(await host.read(), null);
    await done.closed;
    assert.equal(finishedTold, false);
  });

  it('keepalive detects a peer that stopped answering', async () => {
    const p = await socketPair();
    cleanups.push(p.cleanup);
    const agent = new Session(p.guest, { role: 'agent', hello: agentHello });
    const broker = new Session(p.host, { role: 'broker', hello: brokerHello, keepaliveIntervalMs: 50, keepaliveTimeoutMs: 300 });
    await broker.ready();
    // The guest freezes: it keeps the socket open but answers nothing.
    (p.guest as unknown as NodeJS.EventEmitter).removeAllListeners('data');
    void agent;
    const closed = await new Promise<Error | undefined>((r) => broker.once('close', r));
    assert.match(String(closed?.message), /stopped answering/);
  });

  it('keepalive does not take its own process stalling for a peer that stopped answering', async () => {
    const p = await socketPair();
    cleanups.push(p.cleanup);
    const agent = new Session(p.guest, { role: 'agent', hello: agentHello });
    const broker = new Session(p.host, { role: 'broker', hello: brokerHello, keepaliveIntervalMs: 50, keepaliveTimeoutMs: 300 });
    await broker.ready();
    let lost: Error | undefined;
    broker.once('close', (e?: Error) => (lost = e ?? new Error('closed')));
    // This process does not run for a second (CPU starved, a long pause): the peer's pong waits unread.
    const until = Date.now() + 1000;
    while (Date.now() < until);
    await new Promise((r) => setTimeout(r, 600));
    assert.equal(lost, undefined, `the session was closed: ${lost?.message}`);
    assert.ok(broker.isReady);
    void agent;
  });

  it('ignores garbage between frames without losing the session', async () => {
    const p = await pair();
    cleanups.push(p.cleanup);
    p.guest.write(randomBytes(5000));
    await p.broker.ready();
    p.guest.write(randomBytes(3000));
    assert.ok((await p.broker.ping()) >= 0);
  });

  it('small frames go out while the channel is full; bulk data waits for its drain', async () => {
    const channel = new RecordingChannel();
    const broker = new Session(channel, { role: 'broker', hello: brokerHello, keepaliveIntervalMs: 0 });
    cleanups.push(() => broker.close());
    channel.emit('data', frameOf({ hello: { protocolVersion: PROTOCOL_VERSION, role: v1.Role.ROLE_AGENT, softwareVersion: 'agent', instanceId: 'a', reply: true } }));
    await broker.ready();
    const settle = () => new Promise((r) => setImmediate(r));
    const chunk = randomBytes(64 * 1024);
    const first = broker.openStream({ fileWrite: {} });
    const second = broker.openStream({ fileWrite: {} });
    await settle();
    channel.full = true;
    void first.send({ chunk: { data: chunk } }); // taken; the channel is now full
    await settle();
    channel.written.length = 0;
    void second.send({ chunk: { data: chunk } }); // queued behind the full channel
    const small = broker.openStream({ info: {} });
    small.end();
    await settle();
    const beforeDrain = channel.written.length;
    channel.full = false;
    channel.emit('drain');
    await settle();
    const order: string[] = [];
    const decoder = new FrameDecoder((payload) => {
      const e = v1.Envelope.decode(payload);
      order.push(`${e.body}:${e.streamId === small.id ? 'small' : e.streamId === second.id ? 'bulk' : e.streamId}`);
    });
    for (const b of channel.written) decoder.push(b);
    assert.equal(beforeDrain, 2, 'the small request went out before the drain, the bulk chunk did not');
    assert.deepEqual(order.slice(0, 3), ['open:small', 'close:small', 'message:bulk']);
  });

  it('a relayed stream keeps its order while the channel is full: its small messages and close wait behind its queued data, credit and other streams pass', async () => {
    const channel = new RecordingChannel();
    const broker = new Session(channel, { role: 'broker', hello: brokerHello, keepaliveIntervalMs: 0 });
    cleanups.push(() => broker.close());
    channel.emit('data', frameOf({ hello: { protocolVersion: PROTOCOL_VERSION, role: v1.Role.ROLE_AGENT, softwareVersion: 'agent', instanceId: 'a', reply: true } }));
    await broker.ready();
    const settle = () => new Promise((r) => setImmediate(r));
    const relayed = broker.openRelayed({ exec: {} }, { grant: () => undefined, deliver: () => undefined, remoteEnd: () => undefined, fail: () => undefined });
    await settle();
    // As the daemon relays an exec's messages that came from the agent as its stream 9, without waiting for each.
    const fromAgent = (message: v1.StreamMessage.$Properties) => Buffer.from(v1.Envelope.encode({ streamId: 9, message }).finish());
    channel.full = true;
    broker.relayMessage(9, relayed, fromAgent({ execOutput: { fd: 1, data: randomBytes(64 * 1024) } })); // taken; the channel is now full
    await settle();
    channel.written.length = 0;
    broker.relayMessage(9, relayed, fromAgent({ execOutput: { fd: 1, data: randomBytes(64 * 1024) } }));
    broker.relayMessage(9, relayed, fromAgent({ execOutput: { fd: 1, data: Buffer.from('the last line\n') } }));
    broker.relayMessage(9, relayed, fromAgent({ execExit: { exited: true, code: 0 } }));
    broker.relayControl(relayed, { close: {} });
    broker.relayControl(relayed, { credit: { bytes: 4096 } });
    const other = broker.openStream({ info: {} });
    other.end();
    await settle();
    const frames = () => {
      const seen: string[] = [];
      const decoder = new FrameDecoder((payload) => {
        const e = v1.Envelope.decode(payload);
        const what = e.body === 'message' ? `${e.message!.body}${e.message!.execOutput ? `(${e.message!.execOutput.data!.length})` : ''}` : e.body;
        seen.push(`${e.streamId === relayed ? 'relayed' : 'other'} ${what}`);
      });
      for (const b of channel.written) decoder.push(b);
      return seen;
    };
    assert.deepEqual(frames(), ['relayed credit', 'other open', 'other close'], 'before the drain only credit and the other stream passed');
    channel.full = false;
    channel.emit('drain');
    for (let i = 0; i < 5; i++) await settle();
    assert.deepEqual(frames().slice(3), ['relayed execOutput(65536)', 'relayed execOutput(14)', 'relayed execExit', 'relayed close']);
  });

  it('a peer that never reads: what waits for the channel stays bounded, the peer is not read meanwhile, and reading resumes on drain', async () => {
    const channel = new RecordingChannel();
    const agent = new Session(channel, { role: 'agent', hello: agentHello, onStream: () => undefined });
    cleanups.push(() => agent.close());
    channel.emit('data', frameOf({ hello: { protocolVersion: PROTOCOL_VERSION, role: v1.Role.ROLE_BROKER, softwareVersion: 'b', instanceId: 'b' } }));
    await agent.ready();
    channel.full = true;
    channel.written.length = 0;
    // 1M pings in reads of 1000, fed only while the session reads (a paused socket delivers nothing more).
    const batch = Buffer.concat(Array.from({ length: 1000 }, (_, i) => frameOf({ ping: { nonce: i + 1 } })));
    let fed = 0;
    while (fed < 1000 && !channel.paused) {
      channel.emit('data', batch);
      fed++;
    }
    const written = channel.written.reduce((n, w) => n + w.length, 0);
    assert.ok(channel.paused, `the session stopped reading (after ${fed} reads, ${written} bytes of pongs waiting)`);
    assert.ok(written <= 1024 * 1024 + batch.length * 2, `${written} bytes waiting for the channel`);
    channel.full = false;
    channel.emit('drain');
    assert.equal(channel.paused, false, 'reading resumes once the channel drained');
  });

  it('a frame cut by the previous host does not swallow the next host\'s hello', async () => {
    const p = await socketPair();
    cleanups.push(p.cleanup);
    const agent = new Session(p.guest, { role: 'agent', hello: agentHello, frameTimeoutMs: 100 });
    cleanups.push(() => agent.close());
    // The old host went away 100 bytes into a 1 MiB frame (a serial line gives no sign of it) ...
    p.host.write(encodeFrame(randomBytes(1024 * 1024)).subarray(0, 100));
    await new Promise((r) => setTimeout(r, 50));
    // ... and a new host says hello.
    const broker = new Session(p.host, { role: 'broker', hello: brokerHello, keepaliveIntervalMs: 0 });
    const hello = await broker.ready(3000);
    assert.equal(hello.softwareVersion, 'test-agent');
    assert.equal((await agent.ready(3000)).softwareVersion, 'test-broker');
  });

  it('a frame whose rest arrived while the process was frozen (a paused VM) is not dropped', async () => {
    const p = await socketPair();
    cleanups.push(p.cleanup);
    const agent = new Session(p.guest, { role: 'agent', hello: agentHello, frameTimeoutMs: 100 });
    cleanups.push(() => agent.close());
    const hello = frameOf({ hello: { protocolVersion: PROTOCOL_VERSION, role: v1.Role.ROLE_BROKER, softwareVersion: 'paused', instanceId: 'p' } });
    p.host.write(hello.subarray(0, 10));
    await new Promise((r) => setTimeout(r, 50));
    p.host.write(hello.subarray(10));
    for (const end = Date.now() + 400; Date.now() < end;) { /* frozen: the rest waits in the socket, the timer expires */ }
    assert.equal((await agent.ready(1000)).softwareVersion, 'paused');
  });

  it('the agent drops a host that sends nothing and answers no ping, so that another can connect', async () => {
    const p = await socketPair();
    cleanups.push(p.cleanup);
    const agent = new Session(p.guest, { role: 'agent', hello: agentHello, keepaliveIntervalMs: 50, keepaliveTimeoutMs: 300 });
    // 9 bytes of a header, then silence.
    p.host.write(encodeFrame(randomBytes(10)).subarray(0, 9));
    const started = Date.now();
    const closed = await new Promise<Error | undefined>((r) => agent.once('close', r));
    assert.match(String(closed?.message), /nothing received from the peer for 300 ms/);
    assert.ok(Date.now() - started < 2000);
    assert.ok(p.guest.closed, 'the channel is closed, so the agent can take the next one');
  });

  it('an idle broker that answers pings keeps its session with the agent', async () => {
    const p = await socketPair();
    cleanups.push(p.cleanup);
    const agent = new Session(p.guest, { role: 'agent', hello: agentHello, keepaliveIntervalMs: 50, keepaliveTimeoutMs: 300 });
    const broker = new Session(p.host, { role: 'broker', hello: brokerHello, keepaliveIntervalMs: 0 });
    cleanups.push(() => agent.close());
    await broker.ready();
    await new Promise((r) => setTimeout(r, 1000));
    assert.ok(agent.isReady && broker.isReady);
  });

  it('repeated warnings are limited: a few, then one line counting what was left out', async () => {
    const lines: Array<{ level: string; message: string; meta?: Record<string, unknown> }> = [];
    const logger = Object.fromEntries((['debug', 'info', 'warn', 'error'] as const).map((level) =>
      [level, (message: string, meta?: object) => lines.push({ level, message, meta: meta as Record<string, unknown> })])) as unknown as SessionLogger;
    const p = await socketPair();
    cleanups.push(p.cleanup);
    const agent = new Session(p.guest, { role: 'agent', hello: agentHello, logger });
    const broker = new Session(p.host, { role: 'broker', hello: brokerHello, keepaliveIntervalMs: 0 });
    await broker.ready();
    // 500 frames whose checksums are right and whose contents are no Envelope.
    p.host.write(Buffer.concat(Array.from({ length: 500 }, () => encodeFrame(Buffer.from([0xff, 0xff, 0xff])))));
    await broker.ping();
    const warned = () => lines.filter((l) => l.message.startsWith('undecodable message ignored'));
    assert.ok(warned().length >= 1 && warned().length <= 10, `${warned().length} warnings`);
    agent.close();
    const summary = warned().find((l) => l.meta?.suppressed);
    assert.ok(summary, 'a line counts what was left out');
    assert.equal(warned().length - 1 + Number(summary.meta!.suppressed), 500);
  });
});

