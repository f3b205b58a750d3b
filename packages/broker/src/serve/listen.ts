import { isLoopback } from '@porthole/images';
import { DEFAULT_BROKER_SOCKET } from '../route';

export type ListenSpec = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number; loopback: boolean };

export const DEFAULT_LISTEN = `unix:${DEFAULT_BROKER_SOCKET}`;

/** `unix:PATH` or `tcp:HOST:PORT` (an IPv6 host in brackets: `tcp:[::1]:8080`). */
export function parseListen(spec: string): ListenSpec {
  if (spec.startsWith('unix:') && spec.length > 5) return { kind: 'unix', path: spec.slice(5) };
  const m = /^tcp:(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(spec);
  if (m && Number(m[2]) <= 65535) {
    const host = m[1].replace(/^\[|\]$/g, '');
    return { kind: 'tcp', host, port: Number(m[2]), loopback: isLoopback(host) };
  }
  throw new Error(`bad --listen ${JSON.stringify(spec)}: use unix:/path/to/broker.sock or tcp:HOST:PORT (e.g. tcp:127.0.0.1:8750)`);
}
