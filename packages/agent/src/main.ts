import { Command } from 'commander';
import { loadConfig, DEFAULT_CONFIG_PATH } from './config';
import { LOADER_ENV, Policy } from './policy';
import { startAgent, RunningAgent } from './start';
import { AGENT_VERSION } from './version';
import { DEFAULT_PORT_NAME } from '@porthole/transport';
import { crc32cImplementation } from '@porthole/protocol';
import { watchFile } from 'node:fs';
import { runAsService, SERVICE_NAME } from './windows/service';

function describePolicy(policy: Policy, source: string): string {
  const c = policy.config;
  const onOff = (b: boolean) => (b ? 'on' : 'OFF');
  return [
    `effective policy (${source}):`,
    `  file_write: ${onOff(c.fileWrite.enabled)}; allow ${JSON.stringify(c.fileWrite.allow)}; deny ${JSON.stringify(c.fileWrite.deny)}; max_file_size ${c.fileWrite.maxFileSize || 'unlimited'}; allow_final_symlink ${c.fileWrite.allowFinalSymlink}`,
    `  file_read:  ${onOff(c.fileRead.enabled)}; allow ${JSON.stringify(c.fileRead.allow)}; deny ${JSON.stringify(c.fileRead.deny)}`,
    `  exec:       ${onOff(c.exec.enabled)}; users ${c.exec.users.length ? JSON.stringify(c.exec.users) : 'any'}; groups ${c.exec.groups.length ? `each user's own + ${JSON.stringify(c.exec.groups)}` : "each user's own"}; commands ${c.exec.commands.length ? JSON.stringify(c.exec.commands) : 'any'}; max_concurrent ${c.exec.maxConcurrent || 'unlimited'}; secret_args ${JSON.stringify(c.exec.secretArgs)}; spawn_helper ${c.exec.spawnHelper}`,
    `              env_allow ${JSON.stringify(c.exec.envAllow)}; refused unless allowed: ${LOADER_ENV.join(' ')}`,
    `  payload:    ${onOff(c.payload.enabled)}; run_commands ${c.payload.runCommands}; state_dir ${c.payload.stateDir}`,
    `  transfers:  state_dir ${c.transfers.stateDir}; abandon_after_seconds ${c.transfers.abandonAfterSeconds}; max_unfinished ${c.transfers.maxUnfinished || 'unlimited'}`,
    `  session:    max_streams ${c.session.maxStreams || 'unlimited'}; max_open_files ${c.session.maxOpenFiles || 'unlimited'}; peer_timeout_seconds ${c.session.peerTimeoutSeconds}`,
    `  nova:       ${onOff(c.nova.enabled)} (xenstore data/host requests, with --channel xen)`,
    `  log:        file ${c.log.file || '(stderr only)'}; level ${c.log.level}`,
    // Loaded here only to say which: the agent itself picks it with its first checked bulk frame.
    `crc32c: ${crc32cImplementation()} (payload CRC on serial lines; virtio-serial, sockets and xenstore negotiate it off)`,
  ].join('\n');
}

export async function main(argv = process.argv): Promise<void> {
  const program = new Command('porthole-agent')
    .description('Porthole guest agent: serves file injection, file read-back and exec to the host over virtio-serial, a serial port or xenstore')
    .option('--channel <spec>', 'virtio[:NAME] | virtio-path:DEV | unix:PATH | unix-listen:PATH | serial:DEV[@BAUD] | xen[:DEV]', `virtio:${DEFAULT_PORT_NAME}`)
    .option('--config <file>', 'owner policy file (TOML)', DEFAULT_CONFIG_PATH)
    .option('--check-config', 'validate the config, print the effective policy and exit (0 valid, 1 invalid)')
    .option('--log-file <file>', 'also write the audit log to this file')
    .option('--log-level <level>', 'error | warn | info | debug')
    .option('--service', `Windows: run as the service ${SERVICE_NAME} (started by the service control manager)`)
    .version(AGENT_VERSION, '--version')
    .addHelpText('after', `
Examples:
  porthole-agent                                   # virtio-serial port org.porthole.agent.0, /etc/porthole/agent.conf
  porthole-agent --check-config --config ./agent.conf
  porthole-agent --channel serial:/dev/ttyS1@115200
  porthole-agent --channel xen`);
  program.parse(argv);
  const opts = program.opts<{ channel: string; config: string; checkConfig?: boolean; logFile?: string; logLevel?: string; service?: boolean }>();

  if (opts.checkConfig) {
    try {
      const loaded = loadConfig(opts.config);
      console.log(describePolicy(new Policy(loaded.config), loaded.found ? opts.config : `${opts.config} not found: defaults`));
    } catch (err) {
      console.error(`porthole-agent: invalid config: ${(err as Error).message}`);
      process.exit(1);
    }
    return;
  }
  const start = () => startAgent({ channel: opts.channel, configPath: opts.config, logFile: opts.logFile, logLevel: opts.logLevel });
  if (process.platform === 'win32') return runOnWindows(start, opts.config, !!opts.service);
  let running: RunningAgent;
  try {
    running = start();
  } catch (err) {
    console.error(`porthole-agent: ${(err as Error).message}`);
    process.exit(1);
  }
  process.on('SIGHUP', () => running.reload());
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.on(sig, () => {
      running.log.info('stopping', { signal: sig });
      running.stop();
      // End by the signal itself once the handler is gone: status 128+n, a clean stop to systemd and shells.
      setTimeout(() => {
        process.removeAllListeners(sig);
        process.kill(process.pid, sig);
      }, 100);
    });
  }
  await running.done;
}

/**
 * Windows has no SIGHUP: the agent re-reads its config when the file changes (checked every
 * 2 s) and, as a service, on `sc control PortholeAgent paramchange`. Ctrl+C stops a console run.
 */
async function runOnWindows(start: () => RunningAgent, configPath: string, service: boolean): Promise<void> {
  const serve = (): RunningAgent => {
    const running = start();
    watchFile(configPath, { interval: 2000 }, (now, before) => {
      if (now.mtimeMs !== before.mtimeMs || now.size !== before.size) running.reload();
    });
    return running;
  };
  if (service) {
    let running: RunningAgent | undefined;
    await runAsService(SERVICE_NAME, () => {
      running = serve();
      return {
        reload: () => running!.reload(),
        stop: async () => {
          running!.log.info('stopping', { by: 'service control manager' });
          running!.stop();
          await running!.done.catch(() => undefined);
        },
      };
    }, (message, meta) => running?.log.info(message, meta));
    process.exit(0);
  }
  let running: RunningAgent;
  try {
    running = serve();
  } catch (err) {
    console.error(`porthole-agent: ${(err as Error).message}`);
    process.exit(1);
  }
  process.on('SIGINT', () => {
    running.log.info('stopping', { signal: 'SIGINT' });
    running.stop();
    setTimeout(() => process.exit(130), 100);
  });
  await running.done;
}

if (require.main === module) {
  main().catch((err) => {
    console.error(`porthole-agent: ${(err as Error).message}`);
    process.exit(1);
  });
}
