import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import * as winston from 'winston';
import TransportStream from 'winston-transport';
import { eventLogStream } from './windows/event-log';

export type AuditLogger = winston.Logger;

/** Where winston's formats leave the finished line (triple-beam's MESSAGE). */
const MESSAGE = Symbol.for('message');
const logformJson = winston.format.json();

/**
 * winston's json format through the engine's own JSON.stringify: logform's safe-stable-stringify is
 * JavaScript, which an agent without V8's JIT interprets (8-11 µs a line against 1.8 µs, on the host with
 * --jitless; ~20× that in an emulated guest). Keys keep the order they were given in. What JSON.stringify
 * cannot write (a cycle, a BigInt) goes through logform's json as before.
 */
const jsonLine = winston.format((info) => {
  try {
    (info as unknown as Record<symbol, string>)[MESSAGE] = JSON.stringify(info);
    return info;
  } catch {
    return logformJson.transform(info, logformJson.options);
  }
});

/**
 * The log file: each line appended with one write. winston's File transport hands every line through a
 * PassThrough and an fs.WriteStream, about a tenth of the agent's main-thread CPU per command it runs
 * (without V8's JIT, which the agent runs without in an emulated guest); a line is a few hundred bytes
 * for the page cache. A line that cannot be written (a full disk) is dropped, not fatal: the request it
 * describes was already carried out, and stderr (the journal) has the line too.
 */
class AppendFileTransport extends TransportStream {
  private readonly fd: number;

  constructor(filename: string) {
    super();
    mkdirSync(dirname(filename), { recursive: true });
    this.fd = openSync(filename, 'a');
  }

  override log(info: Record<symbol, string>, callback: () => void): void {
    try {
      writeSync(this.fd, `${info[MESSAGE]}\n`);
    } catch {
      // dropped (see above)
    }
    callback();
  }

  override close(): void {
    closeSync(this.fd);
  }
}

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
  if (options.file) transports.push(new AppendFileTransport(options.file));
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
    format: winston.format.combine(winston.format.timestamp(), jsonLine()),
    defaultMeta: { service: 'porthole-agent' },
    transports,
  });
  if (eventLogError) logger.warn('not writing to the Windows event log', { error: eventLogError });
  return logger;
}
