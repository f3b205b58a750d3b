// The agent under a host that breaks the protocol's rules: credit ignored,
// streams and files opened without end, floods of failing requests. Each case
// checks the agent refuses with a cause that names the rule or limit, holds
// nothing for the offender, and goes on serving.
import { strict as assert } from 'node:assert';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { v1, PortholeError, Session, Stream, encodeFrame } from '@porthole/protocol';
import { Channel, UnixSocketConnector } from '@porthole/transport';
import { Agent, createAuditLogger } from '@porthole/agent';
import { AgentHarness, SPAWN_HELPER, agentTestConfig, startAgentHarness } from './harness';
import { info, writeFile } from './client';

const b = (s: string) => Buffer.from(s);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Writes `count` chunks of `size` bytes for `stream` straight to the channel, credit or not. */
function flood(h: AgentHarness, stream: Stream, count: number, size = 64 * 1024): void {
  const data = randomBytes(size);
  for (let i = 0; i < count; i++) {
    h.session.channel.write(encodeFrame(v1.Envelope.encode({ streamId: stream.id, message: { chunk: { offset: i * size, data } } }).finish()));
  }
}

/** A process is gone when it no longer exists or is only a zombie waiting for its reaper. */
function gone(pid: number): boolean {
  try {
    return /^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return true;
  }
}

/** The error that ends a stream (reading it to its end). */
async function failure(stream: Stream): Promise<PortholeError | undefined> {
  try {
    while ((await stream.read()) !== null);
    return undefined;
  } catch (err) {
    return err as PortholeError;
  }
}

describe('agent: a host that breaks the rules', function () {
  this.timeout(60000);
  let h: AgentHarness;
  afterEach(async () => h.cleanup());

  it('stdin sent past the credit into a command that never reads: the stream is reset, the command stopped', async () => {
    h = await startAgentHarness();
    const stream = h.session.openStream({ exec: { argv: [b('sleep'), b('60')], stdin: true } });
    const started = await stream.read();
    assert.equal(started?.body, 'execStarted');
    const pid = Number(started!.execStarted!.pid);
    flood(h, stream, 64); // 4 MiB against the agent's 256 KiB window
    const e = await failure(stream);
    assert.equal(e?.codeName, 'PROTOCOL', e?.message);
    assert.match(e!.message, /past the \d+ bytes of credit granted/);
    for (let i = 0; i < 100 && !gone(pid); i++) await sleep(50);
    assert.ok(gone(pid), 'the command was stopped');
    assert.ok((await info(h.session)).uptimeMs, 'the agent goes on serving');
  });

  it('a file write sent without waiting for credit is reset; nothing is left at the target or beside it', async () => {
    h = await startAgentHarness();
    const path = join(h.root, 'flooded.bin');
    const stream = h.session.openStream({ requestId: randomUUID(), fileWrite: { path: b(path) } });
    flood(h, stream, 64);
    const e = await failure(stream);
    assert.equal(e?.codeName, 'PROTOCOL', e?.message);
    for (let i = 0; i < 50 && readdirSync(h.root).length; i++) await sleep(20);
    assert.deepEqual(readdirSync(h.root), [], 'no target, no temporary');
    const ok = await writeFile(h.session, { path: b(path) }, b('fine'));
    assert.equal(Number(ok.size), 4);
  });

  it('a flood of failing requests is logged a few times, then counted in one line', async () => {
    h = await startAgentHarness();
    const failures: Array<PortholeError | undefined> = [];
    for (let batch = 0; batch < 6; batch++) failures.push(...await Promise.all(Array.from({ length: 50 }, () => failure(h.session.openStream({ fileWrite: {} })))));
    assert.ok(failures.every((e) => e?.codeName === 'INVALID_ARGUMENT'), 'every request was refused: ' + [...new Set(failures.map((e) => e?.message))].join('; '));
    const failed = () => h.audit.filter((l) => l.message === 'request failed');
    assert.ok(failed().length <= 10, `${failed().length} lines for 300 alike failures`);
    h.session.close();
    const summary = await (async () => {
      for (let i = 0; i < 100; i++, await sleep(20)) {
        const line = failed().find((l) => typeof l.suppressed === 'number');
        if (line) return line;
      }
      return undefined;
    })();
    assert.ok(summary, 'a line counts the failures left out once the host is gone');
    assert.equal(summary.result, 'INVALID_ARGUMENT');
    assert.equal(failed().length - 1 + Number(summary.suppressed), 300);
  });
});

describe('agent: what one host may hold', function () {
  this.timeout(60000);
  let h: AgentHarness;
  afterEach(async () => h.cleanup());

  const parts = () => readdirSync(h.root).filter((n) => n.endsWith('.part'));
  const waitFor = async (what: string, ok: () => boolean, ms = 10000) => {
    for (const end = Date.now() + ms; !ok(); await sleep(50)) if (Date.now() > end) assert.fail(`${what} (waited ${ms} ms)`);
  };

  it('streams past session.max_streams are refused with RESOURCE_EXHAUSTED naming the limit', async () => {
    h = await startAgentHarness((c) => { c.session.maxStreams = 4; });
    const sleeping = Array.from({ length: 4 }, () => h.session.openStream({ exec: { argv: [b('sleep'), b('30')] } }));
    for (const s of sleeping) assert.equal((await s.read())?.body, 'execStarted');
    const refused = await failure(h.session.openStream({ info: {} }));
    assert.equal(refused?.codeName, 'RESOURCE_EXHAUSTED', refused?.message);
    assert.equal(refused?.rule, 'session.max_streams = 4');
    assert.match(refused!.message, /4 streams are open/);
    for (const s of sleeping) s.reset(new PortholeError(v1.ErrorCode.ERROR_CODE_CANCELLED, 'enough'));
    await waitFor('a stream is free again', () => h.session.openStreams === 0);
    assert.ok((await info(h.session)).uptimeMs);
  });

  it('file reads and writes past session.max_open_files are refused with RESOURCE_EXHAUSTED naming the limit', async () => {
    h = await startAgentHarness((c) => { c.session.maxOpenFiles = 3; });
    const waiting = Array.from({ length: 3 }, (_, i) => h.session.openStream({ requestId: randomUUID(), fileWrite: { path: b(join(h.root, `w${i}`)) } }));
    await waitFor('three temporaries open', () => parts().length === 3);
    const refused = await failure(h.session.openStream({ fileRead: { path: b('/etc/hostname') } }));
    assert.equal(refused?.codeName, 'RESOURCE_EXHAUSTED', refused?.message);
    assert.equal(refused?.rule, 'session.max_open_files = 3');
    for (const s of waiting) s.reset(new PortholeError(v1.ErrorCode.ERROR_CODE_INVALID_ARGUMENT, 'never mind'));
    await waitFor('the temporaries are gone', () => parts().length === 0);
    await writeFile(h.session, { path: b(join(h.root, 'after')) }, b('x'));
  });

  it('writes opened without data leave no temporary once their host is gone', async () => {
    h = await startAgentHarness();
    for (let i = 0; i < 200; i++) h.session.openStream({ requestId: randomUUID(), fileWrite: { path: b(join(h.root, `f${i}`)) } });
    await waitFor('the agent opened its limit of temporaries', () => parts().length >= 32, 20000);
    h.session.close();
    await h.reconnect();
    await waitFor('no temporary is left', () => parts().length === 0);
  });

  it('a storm of cancelled writes keeps at most transfers.max_unfinished temporaries for a resume', async () => {
    h = await startAgentHarness((c) => { c.transfers.maxUnfinished = 10; });
    for (let i = 0; i < 60; i++) {
      const s = h.session.openStream({ requestId: randomUUID(), fileWrite: { path: b(join(h.root, `s${i}`)) } });
      await s.send({ chunk: { offset: 0, data: randomBytes(1000) } });
      // Reset once the agent holds the bytes: a temporary without any is swept at once, which is not what this counts.
      const held = () => parts().some((n) => n.startsWith(`.s${i}.`) && statSync(join(h.root, n), { throwIfNoEntry: false })?.size === 1000);
      await waitFor(`write ${i} holds its bytes`, held);
      s.reset(new PortholeError(v1.ErrorCode.ERROR_CODE_CANCELLED, 'changed my mind'));
    }
    await waitFor('at most 10 are kept', () => parts().length <= 10);
    await sleep(300);
    assert.ok(parts().length <= 10, `${parts().length} temporaries`);
    assert.ok(parts().length >= 1, 'the newest are kept for a resume');
  });
});

describe('agent: listening on a Unix socket, one host at a time', function () {
  this.timeout(30000);
  let dir: string;
  let sock: string;
  let agent: Agent;
  let running: Promise<void>;
  const channels: Channel[] = [];
  beforeEach(() => {
    const t = agentTestConfig('porthole-agent-listen-', (c) => { c.session.peerTimeoutSeconds = 1; });
    dir = t.dir;
    sock = join(dir, 'agent.sock');
    agent = new Agent({ connector: new UnixSocketConnector(sock, { listen: true }), config: t.config, log: createAuditLogger({ silent: true }), spawnHelper: SPAWN_HELPER });
    running = agent.run().catch(() => undefined);
  });
  afterEach(async () => {
    agent.stop();
    for (const c of channels.splice(0)) c.close();
    await running;
    rmSync(dir, { recursive: true, force: true });
  });

  const dial = async () => {
    for (let i = 0; ; i++) {
      try {
        const c = await new UnixSocketConnector(sock).connect();
        channels.push(c);
        return c;
      } catch (err) {
        if (i > 100) throw err;
        await sleep(20); // the agent is not listening yet
      }
    }
  };
  const greeted = async (channel: Channel, ms: number) => {
    const s = new Session(channel, { role: 'broker', hello: { softwareVersion: 'next host' }, keepaliveIntervalMs: 0 });
    await s.ready(ms);
    return info(s);
  };

  it('a host that sends 9 bytes and falls silent is dropped: the next host is greeted', async () => {
    const silent = await dial();
    silent.write(encodeFrame(randomBytes(10)).subarray(0, 9));
    const started = Date.now();
    const next = await dial();
    assert.ok((await greeted(next, 10000)).uptimeMs);
    assert.ok(Date.now() - started < 5000, `greeted after ${Date.now() - started} ms`);
    assert.ok(silent.closed, 'the silent host was disconnected');
  });

  it('a host that went away in the middle of a frame: the next connection starts with a fresh decoder', async () => {
    const cut = await dial();
    cut.write(encodeFrame(randomBytes(1024 * 1024)).subarray(0, 100));
    await sleep(100);
    cut.close();
    const next = await dial();
    assert.ok((await greeted(next, 2000)).uptimeMs);
  });
});

