// An agent executable started as a process on this host, and a host-side Session's handshake with it.
import { ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as net from 'node:net';
import { join } from 'node:path';
import { Session, v1 } from '@porthole/protocol';
import { SocketChannel, UnixSocketConnector } from '@porthole/transport';

/**
 * Start an agent and wait until a host-side Session finished the handshake with it. `command` is the
 * executable, or an emulator's command line ending in it (another CPU's agent under qemu-user).
 */
export async function helloFrom(command: string[], channelArg: string, acceptOn: () => Promise<SocketChannel>, dir: string, timeoutMs = 15_000) {
  const started = process.hrtime.bigint();
  const [file, ...args] = command;
  const agent = spawn(file, [...args, '--channel', channelArg, '--config', join(dir, 'no-such.conf'), '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  agent.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  try {
    const session = new Session(await acceptOn(), { role: 'broker', hello: { softwareVersion: 'packaging-test' }, keepaliveIntervalMs: 0 });
    const hello = await session.ready(timeoutMs);
    return { agent, session, hello, ms: Number(process.hrtime.bigint() - started) / 1e6 };
  } catch (err) {
    agent.kill('SIGKILL');
    throw new Error(`${(err as Error).message}; agent stderr: ${stderr.trim()}`);
  }
}

export function stop(agent: ChildProcess): Promise<void> {
  if (agent.exitCode !== null || agent.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    agent.once('exit', () => resolve());
    agent.kill('SIGKILL');
  });
}

/** A Unix socket the agent dials (--channel unix:PATH); resolves with the accepted channel. */
export function listenOnce(path: string): { accepted: () => Promise<SocketChannel>; close: () => void } {
  const server = net.createServer();
  const accepted = new Promise<SocketChannel>((resolve) => server.once('connection', (s) => resolve(new SocketChannel(s, `unix:${path}#agent`))));
  server.listen(path);
  return { accepted: () => accepted, close: () => server.close() };
}

/** The hello of an agent that opened a pty with serialport (--channel serial:), the pty bridged to a Unix socket by socat. */
export async function helloOverSerial(command: string[], dir: string, timeoutMs?: number): Promise<v1.Hello> {
  const tty = join(dir, 'tty');
  const sock = join(dir, 'serial.sock');
  const socat = spawn('socat', [`pty,link=${tty},raw,echo=0`, `unix-listen:${sock}`], { stdio: 'ignore' });
  try {
    const deadline = Date.now() + 5000;
    while (!(existsSync(tty) && existsSync(sock)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const connect = () => new UnixSocketConnector(sock).connect() as Promise<SocketChannel>;
    const { agent, session, hello } = await helloFrom(command, `serial:${tty}`, connect, dir, timeoutMs);
    session.close();
    await stop(agent);
    return hello;
  } finally {
    await stop(socat);
  }
}
