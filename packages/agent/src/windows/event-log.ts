// The Windows Application event log: the agent's start and stop, its warnings and errors, as the
// same metadata-only JSON line the log file gets (never file contents or environment values).
// Written with ReportEventW (advapi32, through koffi) under the source PortholeAgent. No message
// file is registered for the source: Event Viewer shows the line as the event's inserted string.
import { Writable } from 'node:stream';
import { loadKoffi } from '@porthole/transport';
import { SERVICE_NAME } from './service';

const TYPE = { error: 0x1, warn: 0x2, info: 0x4 } as const; // EVENTLOG_ERROR_TYPE, _WARNING_TYPE, _INFORMATION_TYPE
/** Event ids by what happened, so a filter in Event Viewer can pick them. */
const EVENT_ID = { starting: 1, stopping: 2, warn: 3, error: 4 } as const;
const MESSAGE = Symbol.for('message');

type ReportEvent = (h: unknown, type: number, category: number, id: number, sid: null, n: number, size: number, strings: string[], data: null) => number;

/**
 * An object-mode stream for winston's Stream transport (which passes it each entry whole), writing
 * the agent's start and stop, warnings and errors to the event log. Throws when koffi or the event
 * source cannot be had.
 */
export function eventLogStream(): Writable {
  const advapi = loadKoffi().load('advapi32.dll');
  const register = advapi.func('void * __stdcall RegisterEventSourceW(str16 server, str16 source)');
  const report: ReportEvent = advapi.func('int __stdcall ReportEventW(void *h, uint16 type, uint16 category, uint32 id, void *sid, uint16 n, uint32 size, str16 *strings, void *data)');
  const source = register(null, SERVICE_NAME);
  if (!source) throw new Error('RegisterEventSourceW failed');
  return new Writable({
    objectMode: true,
    write(info: { level: string; message: unknown; [MESSAGE]?: string }, _encoding, next) {
      const { level, message } = info;
      const id = level === 'error' || level === 'warn' ? EVENT_ID[level] : message === 'starting' || message === 'stopping' ? EVENT_ID[message] : undefined;
      if (id !== undefined) report(source, TYPE[level as keyof typeof TYPE] ?? TYPE.info, 0, id, null, 1, 0, [info[MESSAGE] ?? String(message)], null);
      next();
    },
  });
}
