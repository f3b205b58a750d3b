import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { Session } from '@porthole/protocol';
import { Channel, Connector, UnixSocketConnector } from '@porthole/transport';
import { Agent, AgentConfig, createAuditLogger, defaultConfig } from '@porthole/agent';
import { XenstoreServer, connectXenstoreGuest, connectXenstoreHost } from '@porthole/xenstore';

/**
 * The real agent (in this process) on one end of a link (by default a Unix
 * socket, as QEMU's chardev socket), and a broker session on the other.
 */
export interface AgentHarness {
  /** Temporary directory of this harness; `root` below it is where tests write. */
  dir: string;
  root: string;
  config: AgentConfig;
  agent: Agent;
  /** Broker session of the current connection. */
  session: Session;
  /** Audit log lines, parsed. */
  audit: Array<Record<string, unknown>>;
  /** Accept the agent's next connection (after the current one was closed) and handshake. */
  reconnect(): Promise<Session>;
  cleanup(): Promise<void>;
}

/** How the agent and the broker are connected: the agent's connector and the broker's next channel. */
export interface AgentLink {
  agent: Connector;
  /** The broker's side of the next connection (again after a reconnect). */
  broker(): Promise<Channel>;
  close(): Promise<void> | void;
}

/** A Unix socket the broker listens on, as QEMU's chardev socket. */
export function socketLink(dir: string): AgentLink {
  const sock = join(dir, 'agent.sock');
  const listener = new UnixSocketConnector(sock, { listen: true });
  return { agent: new UnixSocketConnector(sock), broker: () => listener.connect(), close: () => listener.close() };
}

/** The agent as guest 5 of a test xenstored (its xenbus), the broker as dom0: the xenstore channel. */
export async function xenstoreLink(dir: string): Promise<AgentLink & { server: XenstoreServer }> {
  const domid = 5;
  const server = new XenstoreServer();
  const socket = join(dir, 'xenstored.sock');
  const guest = join(dir, `domain-${domid}`);
  await server.listen(socket);
  await server.listenDomain(domid, guest);
  server.introduceDomain(domid);
  return {
    server,
    agent: connectXenstoreGuest({ path: guest }),
    broker: () => connectXenstoreHost(domid, { socketPath: socket }).connect(),
    close: () => server.close(),
  };
}

/** The channels the integration tests run over. */
export const TRANSPORTS: ReadonlyArray<{ name: string; link: (dir: string) => AgentLink | Promise<AgentLink> }> = [
  { name: 'a socket', link: socketLink },
  { name: 'xenstore', link: xenstoreLink },
];

/**
 * A temporary directory with `root` (where tests write in the "guest") and the
 * agent's default config with its state kept inside the directory, then tuned.
 */
export function agentTestConfig(prefix: string, tune: (config: AgentConfig, root: string) => void): { dir: string; root: string; config: AgentConfig } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const root = join(dir, 'root');
  mkdirSync(root);
  const config = defaultConfig();
  config.transfers.stateDir = join(dir, 'state');
  config.payload.stateDir = join(dir, 'payloads');
  tune(config, root);
  return { dir, root, config };
}

/** porthole-spawn as `npm run build` makes it: the tests run the agent from its sources, not beside it. */
export const SPAWN_HELPER = join(__dirname, '..', '..', 'packages', 'agent', 'dist', 'porthole-spawn');

export async function startAgentHarness(
  tune: (config: AgentConfig, root: string) => void = () => undefined,
  makeLink: (dir: string) => AgentLink | Promise<AgentLink> = socketLink,
): Promise<AgentHarness> {
  const { dir, root, config } = agentTestConfig('porthole-agent-', tune);

  const audit: Array<Record<string, unknown>> = [];
  const lines = new PassThrough();
  let pending = '';
  lines.on('data', (b: Buffer) => {
    pending += b.toString('utf8');
    let nl;
    while ((nl = pending.indexOf('\n')) >= 0) {
      audit.push(JSON.parse(pending.slice(0, nl)) as Record<string, unknown>);
      pending = pending.slice(nl + 1);
    }
  });
  const log = createAuditLogger({ silent: true, stream: lines, level: 'info' });

  const link = await makeLink(dir);
  const accept = async () => {
    const channel = await link.broker();
    const session = new Session(channel, { role: 'broker', hello: { softwareVersion: 'test-broker' }, keepaliveIntervalMs: 0 });
    await session.ready(5000);
    return session;
  };
  const first = accept();
  const agent = new Agent({ connector: link.agent, config, log, spawnHelper: SPAWN_HELPER });
  const running = agent.run().catch(() => undefined);

  const h: AgentHarness = {
    dir, root, config, agent, audit,
    session: await first,
    async reconnect() {
      h.session = await accept();
      return h.session;
    },
    async cleanup() {
      agent.stop();
      h.session.close();
      await link.close();
      await running;
      log.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return h;
}
