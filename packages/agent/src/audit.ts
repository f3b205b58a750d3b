import * as winston from 'winston';
import { eventLogStream } from './windows/event-log';

export type AuditLogger = winston.Logger;

/**
 * One JSON line per request, metadata only: paths, sizes, hashes, ids, modes,
 * argv (secrets redacted), exit codes — never contents, stdin or env values.
 * stderr is captured by journald under systemd; a file can be added.
 */
export function createAuditLogger(
  options: { file?: string; level?: string; silent?: boolean; stream?: NodeJS.WritableStream; windowsEventLog?: boolean } = {},
): AuditLogger {
  const transports: winston.transport[] = [
    new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'debug'], silent: options.silent }),
  ];
  if (options.file) transports.push(new winston.transports.File({ filename: options.file }));
  // An embedding program (or a test) can collect the lines itself.
  if (options.stream) transports.push(new winston.transports.Stream({ stream: options.stream }));
  let eventLogError: string | undefined;
  if (options.windowsEventLog) {
    try {
      transports.push(new winston.transports.Stream({ stream: eventLogStream() }));
    } catch (err) {
      eventLogError = (err as Error).message;
    }
  }
  const logger = winston.createLogger({
    level: options.level ?? 'info',
    format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
    defaultMeta: { service: 'porthole-agent' },
    transports,
  });
  if (eventLogError) logger.warn('not writing to the Windows event log', { error: eventLogError });
  return logger;
}
