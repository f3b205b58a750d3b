import Fastify, { FastifyInstance } from 'fastify';
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import * as net from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from 'winston';
import { PortholeError } from '@porthole/protocol';
import { SocketChannel } from '@porthole/transport';
import { ConnectOptions, describeError } from '../client';
import { connectGuest } from '../guest';
import { CHANNEL_PATH, CHANNEL_UPGRADE } from '../route';
import { connectorForTarget } from '../targets';
import { bearerMatches } from './auth';
import { TaskJournal } from './journal';
import { ListenSpec, parseListen } from './listen';
import { brokerRoutes } from './routes';
import { TaskManager } from './tasks';
import { VmLinks } from './vms';

export interface BrokerServerOptions {
  /** `unix:PATH` or `tcp:HOST:PORT`, or several. */
  listen: string | string[];
  /** Bearer token every request on TCP but /openapi.json must carry; required with a TCP listener. */
  token?: string;
  /** Group (name or id) whose members may use the Unix sockets too (mode 0660); else only the daemon's user (0600). */
  socketGroup?: string;
  /** The task journal's file. */
  journal: string;
  outputRetention?: number;
  maxTasks?: number;
  /** How the broker connects to VMs (timeout etc.). */
  connect?: ConnectOptions;
  /** A VM's session no client used for this long is closed (ms). */
  idleMs?: number;
  logger?: Logger;
}

export interface BrokerServer {
  app: FastifyInstance;
  manager: TaskManager;
  vms: VmLinks;
  /** The first listener: `unix:PATH` or `http://HOST:PORT` (with the port actually bound). */
  address: string;
  /** Every listener, in the order given. */
  addresses: string[];
  /** Every route the server answers, as `METHOD /path` (checked against the OpenAPI document in tests). */
  routes: string[];
  close(): Promise<void>;
}

/** A socket file left by a broker that died is removed; one a live broker serves is not. */
async function clearStaleSocket(path: string): Promise<void> {
  try {
    if (!lstatSync(path).isSocket()) throw new Error(`${path} exists and is not a socket`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  const live = await new Promise<boolean>((resolve) => {
    const s = net.connect(path, () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
  if (live) throw new Error(`another broker is listening on ${path}`);
  unlinkSync(path);
}

/** A group name or id as a gid (through NSS, as ls and chgrp see it). */
function groupId(group: string): number {
  if (/^\d+$/.test(group)) return Number(group);
  try {
    return Number(execFileSync('getent', ['group', group], { encoding: 'utf8' }).split(':')[2]);
  } catch {
    throw new Error(`no group ${JSON.stringify(group)} on this host (--socket-group)`);
  }
}

function listening(server: net.Server, listen: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.once('listening', () => { server.off('error', reject); resolve(); });
    listen();
  });
}

/**
 * Unix sockets carry no token: their mode is the access control. The socket is created with no access
 * for anyone else (umask), then opened to the group, if one is named, so it is never briefly open to all.
 */
async function listenUnix(server: net.Server, path: string, gid: number | undefined): Promise<void> {
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  await clearStaleSocket(path);
  const umask = process.umask(0o177);
  try {
    await listening(server, () => server.listen(path));
  } finally {
    process.umask(umask);
  }
  if (gid !== undefined) {
    chownSync(path, -1, gid);
    chmodSync(path, 0o660);
  }
}

/** A raw HTTP answer on a connection that asked to switch protocols and is refused. */
function refuse(socket: net.Socket, status: number, code: string, message: string): void {
  const body = JSON.stringify({ error: { code, message } });
  socket.end(`HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? 'Error'}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
}

const STATUS_TEXT: Record<number, string> = { 400: 'Bad Request', 401: 'Unauthorized', 404: 'Not Found', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout' };

/** How long the daemon waits for a VM's agent when the client names no time. */
const DEFAULT_CHANNEL_TIMEOUT_MS = 30_000;

/**
 * Start `porthole serve`, the host's broker daemon: the REST API over the task journal, and the
 * Porthole protocol to any VM for the CLI and library users (GET /v1/channel, upgraded). It holds one
 * session per VM, shared by every client and task.
 */
export async function startBrokerServer(options: BrokerServerOptions): Promise<BrokerServer> {
  const specs: ListenSpec[] = [options.listen].flat().map(parseListen);
  if (specs.some((s) => s.kind === 'tcp') && !options.token) throw new Error('a bearer token is required when the broker listens on TCP');
  const gid = options.socketGroup === undefined ? undefined : groupId(options.socketGroup);
  const log = options.logger;
  const connectOptions: ConnectOptions = { timeoutMs: 10000, ...options.connect };
  const vms = new VmLinks({ connect: options.connect, idleMs: options.idleMs, logger: log });
  const journal = new TaskJournal(options.journal, {
    outputRetention: options.outputRetention, maxTasks: options.maxTasks,
    onError: (err) => log?.error(err.message),
  });
  // The daemon's own tasks are clients of its VM sessions like any other; a VM with only qemu-guest-agent is driven through it.
  const manager = new TaskManager(journal, (target) => connectGuest(target, connectOptions, vms.route(target, connectOptions.timeoutMs!)), (t) => {
    log?.info('task ended', { id: t.id, kind: t.kind, target: t.target, status: t.status, error: t.error?.code, durationMs: t.durationMs });
  });
  const app = Fastify({ logger: false, exposeHeadRoutes: false });
  const routes: string[] = [];
  app.addHook('onRoute', (r) => { for (const m of [r.method].flat()) routes.push(`${m} ${r.url}`); });
  const token = options.token;
  // Connections that came in over TCP: only they need the token.
  const overTcp = new WeakSet<net.Socket>();
  const authorized = (socket: net.Socket, authorization: string | undefined) => !overTcp.has(socket) || (token !== undefined && bearerMatches(authorization, token));
  app.addHook('onRequest', async (request, reply) => {
    if (request.url === '/openapi.json' || authorized(request.raw.socket, request.headers.authorization)) return;
    await reply.code(401).header('www-authenticate', 'Bearer').header('connection', 'close')
      .send({ error: { code: 'UNAUTHORIZED', message: 'a valid bearer token is required (Authorization: Bearer TOKEN)' } });
  });
  // Method, route and status only: URLs and bodies can name guest paths and carry env values.
  app.addHook('onResponse', async (request, reply) => {
    log?.info('request', { method: request.method, route: request.routeOptions.url ?? '(none)', status: reply.statusCode, ms: Math.round(reply.elapsedTime) });
  });
  await app.register(async (api) => brokerRoutes(api, manager, vms));
  await app.ready();

  app.server.on('upgrade', (request: IncomingMessage, socket: net.Socket, head: Buffer) => {
    void upgrade(request, socket, head).catch((err: Error) => {
      log?.error('channel upgrade failed', { error: err.message });
      socket.destroy();
    });
  });
  const upgrade = async (request: IncomingMessage, socket: net.Socket, head: Buffer): Promise<void> => {
    // Nothing the client sends may be lost before its leg listens (a well-behaved one waits for the 101).
    socket.pause();
    const url = new URL(request.url ?? '/', 'http://broker');
    const answer = (status: number, code: string, message: string) => {
      log?.info('request', { method: request.method, route: CHANNEL_PATH, status });
      refuse(socket, status, code, message);
    };
    if (url.pathname !== CHANNEL_PATH || request.method !== 'GET') return answer(404, 'NOT_FOUND', `only GET ${CHANNEL_PATH} switches protocols`);
    if (request.headers.upgrade?.toLowerCase() !== CHANNEL_UPGRADE) return answer(400, 'INVALID_ARGUMENT', `Upgrade must be ${CHANNEL_UPGRADE}`);
    if (!authorized(socket, request.headers.authorization)) return answer(401, 'UNAUTHORIZED', 'a valid bearer token is required (Authorization: Bearer TOKEN)');
    const target = url.searchParams.get('target') ?? '';
    const timeoutMs = Number(url.searchParams.get('timeoutMs') ?? DEFAULT_CHANNEL_TIMEOUT_MS);
    if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1) return answer(400, 'INVALID_ARGUMENT', 'timeoutMs must be a whole number of milliseconds ≥ 1');
    try {
      connectorForTarget(target);
    } catch (err) {
      return answer(400, 'INVALID_ARGUMENT', (err as Error).message);
    }
    let attach;
    try {
      attach = await vms.reach(target, timeoutMs);
    } catch (err) {
      const e = PortholeError.from(err);
      return answer(e.codeName === 'TIMEOUT' ? 504 : 502, e.codeName, describeError(e));
    }
    if (socket.destroyed) return;
    log?.info('request', { method: 'GET', route: CHANNEL_PATH, status: 101 });
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: ${CHANNEL_UPGRADE}\r\n\r\n`);
    // The client's hello comes first; the leg answers it (so nothing reaches the client mixed into the 101).
    const join = (first: Buffer) => {
      const channel = new SocketChannel(socket, `client of ${target}`);
      attach(channel);
      channel.emit('data', first);
    };
    if (head.length) join(head);
    else socket.once('data', join).resume();
  };

  const sockets = new Set<net.Socket>();
  const servers: net.Server[] = [];
  const addresses: string[] = [];
  try {
    for (const spec of specs) {
      const server = net.createServer((socket) => {
        if (spec.kind === 'tcp') overTcp.add(socket);
        sockets.add(socket);
        socket.once('close', () => sockets.delete(socket));
        app.server.emit('connection', socket);
      });
      servers.push(server);
      if (spec.kind === 'unix') {
        await listenUnix(server, spec.path, gid);
        addresses.push(`unix:${spec.path}`);
      } else {
        await listening(server, () => server.listen({ host: spec.host, port: spec.port }));
        const addr = server.address() as net.AddressInfo;
        addresses.push(`http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`);
      }
    }
  } catch (err) {
    for (const s of servers) s.close();
    await app.close();
    manager.close();
    throw err;
  }
  log?.info('listening', { addresses, token: token ? 'required on TCP' : 'none', socketGroup: options.socketGroup ?? 'none' });
  return {
    app, manager, vms, address: addresses[0], addresses, routes,
    async close() {
      const closed = Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
      await app.close();
      for (const s of sockets) s.destroy();
      vms.close();
      manager.close();
      await closed;
    },
  };
}
