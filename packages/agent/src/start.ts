import { loadConfig, DEFAULT_CONFIG_PATH, LOG_LEVELS } from './config';
import { createAuditLogger, AuditLogger } from './audit';
import { Agent } from './agent';
import { connectorFor, xenbusPathOf } from './channels';
import { NovaRequests } from './nova';
import { DEFAULT_PORT_NAME } from '@porthole/transport';
import { AGENT_VERSION } from './version';
import { PayloadWatcher } from './payload';
import { whenCrc32cChosen } from '@porthole/protocol';

export interface StartAgentOptions {
  /** `--channel` syntax; default virtio:org.porthole.agent.0. */
  channel?: string;
  /** Owner policy file; a missing file means the defaults. */
  configPath?: string;
  logFile?: string;
  logLevel?: string;
  /** Use this logger instead of one built from the options and the config. */
  log?: AuditLogger;
}

export interface RunningAgent {
  agent: Agent;
  log: AuditLogger;
  /** Settles when the agent stops (rejects when the channel cannot be used at all). */
  done: Promise<void>;
  /** Re-read the config file; an invalid file keeps the previous policy. Returns whether it applied. */
  reload(): boolean;
  stop(): void;
}

/** Load the policy, open the channel and serve until stopped. Throws when the config is invalid. */
export function startAgent(options: StartAgentOptions = {}): RunningAgent {
  const configPath = options.configPath ?? DEFAULT_CONFIG_PATH;
  const channel = options.channel ?? `virtio:${DEFAULT_PORT_NAME}`;
  const loaded = loadConfig(configPath);
  const level = options.logLevel ?? loaded.config.log.level;
  if (!LOG_LEVELS.includes(level)) throw new Error(`bad log level ${JSON.stringify(level)}: use ${LOG_LEVELS.join(', ')}`);
  const log = options.log ?? createAuditLogger({ file: options.logFile ?? (loaded.config.log.file || undefined), level, windowsEventLog: process.platform === 'win32' });
  const agent = new Agent({ connector: connectorFor(channel), config: loaded.config, log });
  log.info('starting', { version: AGENT_VERSION, channel, config: configPath, configFound: loaded.found });
  // Picked with the first bulk frame (see crc32c.ts): slow transfers are explained by a portable one.
  whenCrc32cChosen((implementation, native) => log.info('crc32c', { crc32c: native ? 'native' : 'portable', implementation }));
  // Xen hosts may also send Nova-style requests through xenstore.
  const xenbus = xenbusPathOf(channel);
  const nova = xenbus !== undefined ? new NovaRequests({ path: xenbus, agent }) : undefined;
  nova?.apply(loaded.config.nova.enabled);
  // Payload media are looked for at start and then polled (see payload.ts); the policy is read on every pass.
  const payloads = new PayloadWatcher(agent);
  payloads.start();
  return {
    agent,
    log,
    done: agent.run(),
    reload() {
      try {
        const next = loadConfig(configPath);
        agent.setConfig(next.config);
        nova?.apply(next.config.nova.enabled);
        log.info('config reloaded', { config: configPath, found: next.found });
        return true;
      } catch (err) {
        log.error('config reload failed; keeping the previous policy', { config: configPath, error: (err as Error).message });
        return false;
      }
    },
    stop() {
      payloads.stop();
      agent.stop();
      nova?.stop();
    },
  };
}
