// The bundled agent as its own process (listening on a Unix socket, one host at
// a time), under hosts that break every rule for a bounded time: credit ignored,
// a flood of pings never read, thousands of opens, reset storms, garbage, cut
// frames and silence. Its resident memory is sampled throughout and must stay
// under a stated bound; after each host it must greet the next one.
import { strict as assert } from 'node:assert';
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { v1, PROTOCOL_VERSION, Session, encodeFrame } from '@porthole/protocol';
import { UnixSocketConnector } from '@porthole/transport';
import { SPAWN_HELPER } from './harness';

const repo = join(__dirname, '../..');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const MiB = 1024 * 1024;
/**
 * The stated bound. The agent idles at about 52 MiB and peaked at 115-139 MiB here (its live heap
 * then ~8 MB: the rest is garbage not yet collected); before the fixes it reached 880-910 MiB.
 */
const RSS_BOUND_MIB = 192;
/** The agent's session.peer_timeout_seconds here: a silent host is dropped after it. */
const PEER_TIMEOUT_S = 3;

const frame = (e: v1.Envelope.$Properties) => encodeFrame(v1.Envelope.encode(e).finish());
const hello = () => frame({ hello: { protocolVersion: PROTOCOL_VERSION, role: v1.Role.ROLE_BROKER, softwareVersion: 'rude host', instanceId: randomBytes(8).toString('hex') } });
const chunkFrame = (streamId: number, offset: number, data: Buffer) => frame({ streamId, message: { chunk: { offset, data } } });

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

/** A host that writes whatever it likes and never reads. Resolves once `bytes` went out or `ms` passed (the agent stopped reading). */
function rudeHost(sock: string): Promise<{ socket: net.Socket; send(data: Buffer, ms?: number): Promise<boolean> }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(sock, () => {
      socket.pause(); // never reads what the agent answers
      resolve({
        socket,
        send: (data, ms = 5000) => new Promise((done) => {
          if (socket.destroyed) return done(false);
          if (socket.write(data)) return done(true);
          const timer = setTimeout(() => { socket.off('drain', drained); done(false); }, ms);
          const drained = () => { clearTimeout(timer); done(true); };
          socket.once('drain', drained);
        }),
      });
    });
    socket.on('error', () => undefined); // the agent may drop it: that is the point
    socket.once('error', reject);
  });
}

describe('soak: the agent under hosts that break the rules', function () {
  this.timeout(240000);
  let dir: string;
  let sock: string;
  let agent: ChildProcess;
  let stderr = '';
  const samples: Array<{ phase: string; mib: number }> = [];
  let phase = 'idle';
  let sampler: NodeJS.Timeout;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-soak-'));
    const bundle = join(dir, 'porthole-agent.cjs');
    execFileSync(process.execPath, [join(repo, 'packages/agent/scripts/bundle.mjs'), bundle]);
    copyFileSync(SPAWN_HELPER, join(dir, 'porthole-spawn'));
    const root = join(dir, 'root');
    mkdirSync(root);
    const conf = join(dir, 'agent.conf');
    writeFileSync(conf, [
      '[file_write]', `allow = ["${root}"]`, '[exec]', 'users = ["nobody"]', 'commands = ["sleep", "cat"]',
      '[transfers]', `state_dir = "${join(dir, 'state')}"`, '[session]', `peer_timeout_seconds = ${PEER_TIMEOUT_S}`, '',
    ].join('\n'));
    sock = join(dir, 'agent.sock');
    agent = spawn(process.execPath, [bundle, '--channel', `unix-listen:${sock}`, '--config', conf, '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'pipe'] });
    agent.stderr!.on('data', (b: Buffer) => { stderr = (stderr + b.toString()).slice(-200_000); });
    for (let i = 0; i < 200; i++, await sleep(50)) {
      try {
        await greet(10000);
        break;
      } catch {
        if (agent.exitCode !== null) throw new Error(`the agent ended: ${stderr}`);
      }
    }
    sampler = setInterval(() => samples.push({ phase, mib: rssMiB(agent.pid!) }), 100);
    await sleep(2000);
  });

  after(async () => {
    clearInterval(sampler);
    agent.kill('SIGTERM');
    await new Promise((r) => agent.once('exit', r));
    const byPhase = new Map<string, number>();
    for (const s of samples) byPhase.set(s.phase, Math.max(byPhase.get(s.phase) ?? 0, s.mib));
    console.log(`      agent RSS, MiB (max per phase; bound ${RSS_BOUND_MIB}): ${[...byPhase].map(([p, m]) => `${p} ${m.toFixed(0)}`).join(', ')}`);
    rmSync(dir, { recursive: true, force: true });
  });

  /** A well-behaved host: handshake and an info round trip, then it leaves. */
  async function greet(ms: number): Promise<void> {
    const channel = await new UnixSocketConnector(sock).connect();
    const session = new Session(channel, { role: 'broker', hello: { softwareVersion: 'next host' }, keepaliveIntervalMs: 0 });
    try {
      await session.ready(ms);
      const s = session.openStream({ info: {} });
      s.end();
      assert.equal((await s.read())?.body, 'info');
    } finally {
      session.close();
    }
  }

  /** Run one rude host, then check memory and that the next host is greeted. */
  async function round(name: string, rude: () => Promise<void>): Promise<void> {
    phase = name;
    await rude();
    phase = `${name}, after`;
    await greet((PEER_TIMEOUT_S + 10) * 1000);
    await sleep(500);
    const worst = Math.max(...samples.filter((s) => s.phase.startsWith(name)).map((s) => s.mib));
    assert.ok(worst < RSS_BOUND_MIB, `${name}: the agent reached ${worst.toFixed(0)} MiB`);
    assert.equal(agent.exitCode, null, `the agent ended: ${stderr.slice(-2000)}`);
  }

  it('1M pings from a host that never reads: the agent stops reading it, then drops it', async () => {
    await round('pings', async () => {
      const host = await rudeHost(sock);
      await host.send(hello());
      const batch = Buffer.concat(Array.from({ length: 10_000 }, (_, i) => frame({ ping: { nonce: i + 1 } })));
      let sent = 0;
      for (let i = 0; i < 100 && await host.send(batch, 3000); i++) sent++;
      assert.ok(sent < 100, 'the agent stopped reading before all 1M pings');
      await new Promise((r) => host.socket.once('close', r)); // dropped after the peer timeout
    });
  });

  it('256 MiB of stdin past the credit into `sleep 60`, then a 192 MiB file write without waiting for credit', async () => {
    await round('credit ignored', async () => {
      const host = await rudeHost(sock);
      await host.send(hello());
      await host.send(frame({ streamId: 1, open: { requestId: 'stdin', exec: { argv: [Buffer.from('sleep'), Buffer.from('60')], user: { name: 'nobody' }, stdin: true } } }));
      await host.send(frame({ streamId: 3, open: { requestId: 'write', fileWrite: { path: Buffer.from(join(dir, 'root/flood')) } } }));
      const data = randomBytes(128 * 1024);
      for (let off = 0; off < 256 * MiB; off += data.length) if (!await host.send(chunkFrame(1, off, data), 3000)) break;
      for (let off = 0; off < 192 * MiB; off += data.length) if (!await host.send(chunkFrame(3, off, data), 3000)) break;
      host.socket.destroy();
    });
  });

  it('3000 file writes opened without data, then a storm of 2000 opened, fed and reset', async () => {
    await round('opens and resets', async () => {
      const host = await rudeHost(sock);
      await host.send(hello());
      let id = 1;
      for (let i = 0; i < 3000; i++, id += 2) await host.send(frame({ streamId: id, open: { requestId: `o${i}`, fileWrite: { path: Buffer.from(join(dir, `root/o${i}`)) } } }));
      const data = randomBytes(4096);
      for (let i = 0; i < 2000; i++, id += 2) {
        await host.send(Buffer.concat([
          frame({ streamId: id, open: { requestId: `r${i}`, fileWrite: { path: Buffer.from(join(dir, `root/r${i}`)) } } }),
          chunkFrame(id, 0, data),
          frame({ streamId: id, reset: { error: { code: v1.ErrorCode.ERROR_CODE_CANCELLED, message: 'storm' } } }),
        ]));
      }
      await sleep(1000);
      host.socket.destroy();
    });
    await sleep(1000);
    const parts = execFileSync('find', [join(dir, 'root'), '-name', '*.part']).toString().split('\n').filter(Boolean);
    assert.ok(parts.length <= 64, `${parts.length} partial files left after the host went away`);
  });

  it('120k garbage frames and cut frames, then 9 bytes and silence: the next host is greeted', async () => {
    await round('garbage', async () => {
      const host = await rudeHost(sock);
      await host.send(hello());
      const undecodable = Buffer.concat(Array.from({ length: 10_000 }, () => encodeFrame(randomBytes(8))));
      for (let i = 0; i < 12; i++) await host.send(Buffer.concat([undecodable, randomBytes(64 * 1024)]));
      await host.send(Buffer.concat([encodeFrame(randomBytes(512 * 1024)).subarray(0, 1000), hello()]));
      await host.send(encodeFrame(randomBytes(10)).subarray(0, 9));
      // ... and silence: the agent must drop it for the next host.
    });
    const warnings = stderr.split('\n').filter((l) => l.includes('undecodable message ignored')).length;
    assert.ok(warnings <= 20, `${warnings} warning lines for 120k undecodable frames`);
  });
});
