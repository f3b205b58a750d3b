import * as http from 'node:http';
import * as net from 'node:net';
import { v1, PortholeError } from '@porthole/protocol';
import { Channel, Connector, SocketChannel } from '@porthole/transport';
import { connectorForTarget } from './targets';

const E = v1.ErrorCode;

/** Where `porthole serve`, the host's broker daemon, listens unless told otherwise. */
export const DEFAULT_BROKER_SOCKET = '/run/porthole/broker.sock';
/** Names another daemon socket for every client of this environment (as DOCKER_HOST does for docker). */
export const BROKER_SOCKET_ENV = 'PORTHOLE_BROKER_SOCKET';

/** The HTTP path a client upgrades to the Porthole protocol on, and the Upgrade token. */
export const CHANNEL_PATH = '/v1/channel';
export const CHANNEL_UPGRADE = 'porthole';

/** How a client reaches its VM, for `--verbose` and logs. */
export interface Route {
  via: 'daemon' | 'direct';
  /** A sentence: which daemon, or why the connection is direct. */
  detail: string;
}

export interface RoutedConnector {
  connector: Connector;
  route: Route;
}

export interface RouteOptions {
  /** The daemon's socket; false for a direct connection. */
  broker?: string | false;
  /** How long the daemon may wait for the VM's agent. */
  timeoutMs?: number;
}

/** Whether a daemon listens on `socket`: true, or the errno that says there is none. */
function probe(socket: string): Promise<true | NodeJS.ErrnoException> {
  return new Promise((resolve) => {
    const s = net.connect(socket, () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err));
  });
}

/**
 * The way to a target: through the host's broker daemon when one listens on its socket (the daemon
 * owns every VM's channel, so several clients reach one VM at once), otherwise straight to the VM's
 * channel. A socket named by the caller or the environment must have a daemon; at the default path,
 * no daemon means a direct connection.
 */
export async function routeTo(target: string, options: RouteOptions = {}): Promise<RoutedConnector> {
  if (options.broker === false) return { connector: connectorForTarget(target), route: { via: 'direct', detail: `directly to ${target} (asked for)` } };
  const named = options.broker ?? process.env[BROKER_SOCKET_ENV];
  const socket = named || DEFAULT_BROKER_SOCKET;
  const found = await probe(socket);
  if (found === true) {
    return { connector: new DaemonConnector(socket, target, options.timeoutMs ?? 30000), route: { via: 'daemon', detail: `through the broker daemon at ${socket}` } };
  }
  const none = found.code === 'ENOENT' || found.code === 'ECONNREFUSED';
  if (found.code === 'EACCES') {
    throw new PortholeError(E.ERROR_CODE_PERMISSION_DENIED,
      `permission denied on the broker daemon's socket ${socket}: run as root or as a member of the socket's group, or connect directly (--direct)`);
  }
  if (!none || named) throw new PortholeError(E.ERROR_CODE_NOT_FOUND, `no broker daemon listening on ${socket} (${found.code ?? found.message})`);
  return { connector: connectorForTarget(target), route: { via: 'direct', detail: `directly to ${target} (no broker daemon at ${socket})` } };
}

/**
 * Channels to a VM through the broker daemon: an HTTP request on the daemon's socket names the target,
 * the daemon connects to the VM (or shares the session it holds) and switches the connection to the
 * Porthole protocol, which then runs as it would on the VM's channel. The daemon's answer on a VM it
 * could not reach is final (it already waited), so it is not retried.
 */
export class DaemonConnector implements Connector {
  readonly description: string;

  constructor(readonly socket: string, readonly target: string, private readonly timeoutMs: number) {
    this.description = `${target} through the broker daemon at ${socket}`;
  }

  connect(signal?: AbortSignal): Promise<Channel> {
    return new Promise((resolve, reject) => {
      const query = new URLSearchParams({ target: this.target, timeoutMs: String(this.timeoutMs) });
      const req = http.request({
        socketPath: this.socket, method: 'GET', path: `${CHANNEL_PATH}?${query}`, signal,
        headers: { connection: 'Upgrade', upgrade: CHANNEL_UPGRADE },
        // The daemon answers once it reached the VM: give it its whole wait and a little more.
        timeout: this.timeoutMs + 5000,
      });
      req.once('timeout', () => req.destroy(new PortholeError(E.ERROR_CODE_TIMEOUT, `the broker daemon at ${this.socket} did not answer within ${this.timeoutMs + 5000} ms`)));
      req.once('error', (err: NodeJS.ErrnoException) => reject(err instanceof PortholeError ? err
        : Object.assign(new Error(`broker daemon at ${this.socket}: ${err.message}`, { cause: err }), { code: err.code })));
      req.once('upgrade', (_res, socket, head) => {
        // The daemon says nothing after switching until it has the client's hello.
        if (head.length) socket.unshift(head);
        resolve(new SocketChannel(socket, this.description));
      });
      req.once('response', (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (s: string) => (text += s));
        res.once('end', () => reject(this.refusal(res.statusCode ?? 0, text)));
      });
      req.end();
    });
  }

  /** The daemon's error answer as the PortholeError it stands for. */
  private refusal(status: number, body: string): PortholeError {
    let error: { code?: string; message?: string } = {};
    try {
      error = (JSON.parse(body) as { error?: typeof error }).error ?? {};
    } catch {
      // not JSON: the status line says enough
    }
    const code = (E as unknown as Record<string, number>)[`ERROR_CODE_${error.code}`] ?? (status === 504 ? E.ERROR_CODE_TIMEOUT : E.ERROR_CODE_INTERNAL);
    const message = error.message ?? `the broker daemon at ${this.socket} answered HTTP ${status}`;
    return Object.assign(new PortholeError(code, message), { permanent: true });
  }
}
