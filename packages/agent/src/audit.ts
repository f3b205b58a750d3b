import * as winston from 'winston';

export type AuditLogger = winston.Logger;

/**
 * One JSON line per request, metadata only: paths, sizes, hashes, ids, modes,
 * argv (secrets redacted), exit codes — never contents, stdin or env values.
 * stderr is captured by journald under systemd; a file can be added.
 */
export function createAuditLogger(
  options: { file?: string; level?: string; silent?: boolean; stream?: NodeJS.WritableStream } = {},
): AuditLogger {
  const transports: winston.transport[] = [
    new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'debug'], silent: options.silent }),
  ];
  if (options.file) transports.push(new winston.transports.File({ filename: options.file }));
  // An embedding program (or a test) can collect the lines itself.
  if (options.stream) transports.push(new winston.transports.Stream({ stream: options.stream }));
  return winston.createLogger({
    level: options.level ?? 'info',
    format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
    defaultMeta: { service: 'porthole-agent' },
    transports,
  });
}
