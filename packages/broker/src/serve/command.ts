import { Command, InvalidArgumentError, Option } from 'commander';
import { createLogger, format, transports } from 'winston';
import { generateToken, readTokenFile } from './auth';
import { DEFAULT_LISTEN, parseListen } from './listen';
import { startBrokerServer } from './server';

export const DEFAULT_JOURNAL = '/var/lib/porthole/broker/journal.bin';

interface ServeOptions {
  listen: string[];
  socketGroup?: string;
  idleTimeout: string;
  tokenFile?: string;
  journal: string;
  outputRetention: string;
  maxTasks: string;
  logLevel: string;
}

function positive(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`${name} must be a whole number ≥ 1, got ${JSON.stringify(v)}`);
  return n;
}

/** `porthole serve`: the REST API. Usage errors are thrown, for the porthole program to report. */
export function registerServeCommand(program: Command, exitCodes: { FAILED: number }): void {
  program.command('serve')
    .description('the host\'s broker daemon: owns every VM\'s channel (porthole and library users on this host go through it) and serves the REST API (tasks: inject, exec, live output; the OpenAPI document is at /openapi.json)')
    .addOption(new Option('--listen <spec>', 'unix:PATH or tcp:HOST:PORT, repeatable (TCP requires a bearer token)')
      .argParser((v: string, all: string[]) => [...all, v]).default([], DEFAULT_LISTEN))
    .option('--socket-group <group>', 'members of this group may use the Unix sockets (mode 0660); default: only this user (0600)')
    .option('--token-file <file>', 'bearer token for TCP (first line); without it a TCP listener gets a new token, printed once')
    .option('--idle-timeout <seconds>', 'close a VM\'s session once no client used it for this long', '60')
    .option('--journal <file>', 'task journal (survives restarts)', DEFAULT_JOURNAL)
    .option('--output-retention <bytes>', 'output kept per task', String(1024 * 1024))
    .option('--max-tasks <n>', 'finished tasks kept in the journal', '1000')
    .option('--log-level <level>', 'error | warn | info | debug', 'info')
    .addHelpText('after', `
Examples:
  porthole serve                                           # ${DEFAULT_LISTEN}, no token (socket mode 0600)
  porthole serve --listen tcp:127.0.0.1:8750 --token-file /etc/porthole/broker.token
  porthole serve --listen ${DEFAULT_LISTEN} --socket-group porthole --listen tcp:127.0.0.1:8750 --token-file /etc/porthole/broker.token
  curl --unix-socket ${DEFAULT_LISTEN.slice(5)} localhost/v1/tasks`)
    .action(async (o: ServeOptions, cmd: Command) => {
      const json = cmd.optsWithGlobals<{ json?: boolean }>().json;
      let token: string | undefined;
      let retention: number;
      let maxTasks: number;
      let idleMs: number;
      const listen = o.listen.length ? o.listen : [DEFAULT_LISTEN];
      try {
        const tcp = listen.map(parseListen).some((spec) => spec.kind === 'tcp');
        retention = positive('--output-retention', o.outputRetention);
        maxTasks = positive('--max-tasks', o.maxTasks);
        idleMs = positive('--idle-timeout', o.idleTimeout) * 1000;
        token = o.tokenFile ? readTokenFile(o.tokenFile) : tcp ? generateToken() : undefined;
      } catch (err) {
        throw new InvalidArgumentError((err as Error).message);
      }
      const newToken = token && !o.tokenFile ? token : undefined;
      if (newToken && !json) process.stdout.write(`bearer token (shown once, not logged): ${newToken}\n`);
      const logger = createLogger({
        level: o.logLevel,
        format: format.combine(format.timestamp(), format.json()),
        transports: [new transports.Console({ stderrLevels: ['error', 'warn', 'info', 'debug'] })],
      });
      try {
        const server = await startBrokerServer({ listen, token, socketGroup: o.socketGroup, journal: o.journal, outputRetention: retention, maxTasks, idleMs, logger });
        if (json) process.stdout.write(`${JSON.stringify({ ok: true, listening: server.addresses, ...(newToken ? { token: newToken } : {}) })}\n`);
        else for (const address of server.addresses) process.stdout.write(`porthole broker listening on ${address}\n`);
        for (const sig of ['SIGINT', 'SIGTERM'] as const) {
          process.once(sig, () => {
            logger.info('stopping', { signal: sig });
            void server.close().then(() => process.exit(0), () => process.exit(exitCodes.FAILED));
          });
        }
      } catch (err) {
        process.stderr.write(`porthole: ${(err as Error).message}\n`);
        process.exit(exitCodes.FAILED);
      }
    });
}
