import { Command, InvalidArgumentError } from 'commander';
import { createLogger, format, transports } from 'winston';
import { generateToken, readTokenFile } from './auth';
import { DEFAULT_LISTEN, parseListen } from './listen';
import { startBrokerServer } from './server';

export const DEFAULT_JOURNAL = '/var/lib/porthole/broker/journal.bin';

interface ServeOptions {
  listen: string;
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
    .description('serve the REST API (tasks: inject, exec, live output) for automation; the OpenAPI document is at /openapi.json')
    .option('--listen <spec>', 'unix:PATH or tcp:HOST:PORT (TCP requires a bearer token)', DEFAULT_LISTEN)
    .option('--token-file <file>', 'bearer token (first line); without it a TCP listener gets a new token, printed once')
    .option('--journal <file>', 'task journal (survives restarts)', DEFAULT_JOURNAL)
    .option('--output-retention <bytes>', 'output kept per task', String(1024 * 1024))
    .option('--max-tasks <n>', 'finished tasks kept in the journal', '1000')
    .option('--log-level <level>', 'error | warn | info | debug', 'info')
    .addHelpText('after', `
Examples:
  porthole serve                                           # ${DEFAULT_LISTEN}, no token (socket mode 0600)
  porthole serve --listen tcp:127.0.0.1:8750 --token-file /etc/porthole/broker.token
  curl --unix-socket ${DEFAULT_LISTEN.slice(5)} localhost/v1/tasks`)
    .action(async (o: ServeOptions, cmd: Command) => {
      const json = cmd.optsWithGlobals<{ json?: boolean }>().json;
      let token: string | undefined;
      let retention: number;
      let maxTasks: number;
      try {
        const spec = parseListen(o.listen);
        retention = positive('--output-retention', o.outputRetention);
        maxTasks = positive('--max-tasks', o.maxTasks);
        token = o.tokenFile ? readTokenFile(o.tokenFile) : spec.kind === 'tcp' ? generateToken() : undefined;
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
        const server = await startBrokerServer({ listen: o.listen, token, journal: o.journal, outputRetention: retention, maxTasks, logger });
        process.stdout.write(json ? `${JSON.stringify({ ok: true, listening: server.address, ...(newToken ? { token: newToken } : {}) })}\n` : `porthole broker listening on ${server.address}\n`);
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
