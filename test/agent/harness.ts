import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { Session } from '@porthole/protocol';
import { UnixSocketConnector } from '@porthole/transport';
import { Agent, AgentConfig, createAuditLogger, defaultConfig } from '@porthole/agent';

/**
 * The real agent (in this process) on one end of a Unix socket, and a broker
 * session on the other, as QEMU's chardev socket would connect them.
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

export async function startAgentHarness(tune: (config: AgentConfig, root: string) => void = () => undefined): Promise<AgentHarness> {
  const dir = mkdtempSync(join(tmpdir(), 'porthole-agent-'));
  const root = join(dir, 'root');
  mkdirSync(root);
  const config = defaultConfig();
  config.transfers.stateDir = join(dir, 'state');
  config.payload.stateDir = join(dir, 'payloads');
  tune(config, root);

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

  const sock = join(dir, 'agent.sock');
  const listener = new UnixSocketConnector(sock, { listen: true });
  const accept = async () => {
    const channel = await listener.connect();
    const session = new Session(channel, { role: 'broker', hello: { softwareVersion: 'test-broker' }, keepaliveIntervalMs: 0 });
    await session.ready(5000);
    return session;
  };
  const first = accept();
  const agent = new Agent({ connector: new UnixSocketConnector(sock), config, log });
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
      listener.close();
      await running;
      log.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return h;
}
