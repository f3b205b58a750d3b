import Fastify, { FastifyInstance } from 'fastify';
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import * as net from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from 'winston';
import { ConnectOptions } from '../client';
import { bearerMatches } from './auth';
import { TaskJournal } from './journal';
import { ListenSpec, parseListen } from './listen';
import { brokerRoutes } from './routes';
import { TaskManager } from './tasks';

export interface BrokerServerOptions {
  /** `unix:PATH` or `tcp:HOST:PORT`. */
  listen: string;
  /** Bearer token every request but /openapi.json must carry; required on TCP. */
  token?: string;
  /** The task journal's file. */
  journal: string;
  outputRetention?: number;
  maxTasks?: number;
  /** How the broker connects to targets (timeout etc.). */
  connect?: ConnectOptions;
  logger?: Logger;
}

export interface BrokerServer {
  app: FastifyInstance;
  manager: TaskManager;
  /** `unix:PATH` or `http://HOST:PORT` (with the port actually bound). */
  address: string;
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

async function listenOn(app: FastifyInstance, spec: ListenSpec): Promise<string> {
  if (spec.kind === 'unix') {
    mkdirSync(dirname(spec.path), { recursive: true, mode: 0o755 });
    await clearStaleSocket(spec.path);
    await app.listen({ path: spec.path });
    // Only the broker's own user may drive it over the socket (no token there).
    chmodSync(spec.path, 0o600);
    return `unix:${spec.path}`;
  }
  await app.listen({ host: spec.host, port: spec.port });
  const addr = app.server.address() as net.AddressInfo;
  return `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
}

/** Start `porthole serve`: the REST API over the task journal. */
export async function startBrokerServer(options: BrokerServerOptions): Promise<BrokerServer> {
  const spec = parseListen(options.listen);
  if (spec.kind === 'tcp' && !options.token) throw new Error('a bearer token is required when the broker listens on TCP');
  const log = options.logger;
  const journal = new TaskJournal(options.journal, {
    outputRetention: options.outputRetention, maxTasks: options.maxTasks,
    onError: (err) => log?.error(err.message),
  });
  const manager = new TaskManager(journal, { timeoutMs: 10000, ...options.connect }, (t) => {
    log?.info('task ended', { id: t.id, kind: t.kind, target: t.target, status: t.status, error: t.error?.code, durationMs: t.durationMs });
  });
  const app = Fastify({ logger: false, exposeHeadRoutes: false, forceCloseConnections: true });
  const routes: string[] = [];
  app.addHook('onRoute', (r) => { for (const m of [r.method].flat()) routes.push(`${m} ${r.url}`); });
  const token = options.token;
  if (token) {
    app.addHook('onRequest', async (request, reply) => {
      if (request.url === '/openapi.json' || bearerMatches(request.headers.authorization, token)) return;
      await reply.code(401).header('www-authenticate', 'Bearer').header('connection', 'close')
        .send({ error: { code: 'UNAUTHORIZED', message: 'a valid bearer token is required (Authorization: Bearer TOKEN)' } });
    });
  }
  // Method, route and status only: URLs and bodies can name guest paths and carry env values.
  app.addHook('onResponse', async (request, reply) => {
    log?.info('request', { method: request.method, route: request.routeOptions.url ?? '(none)', status: reply.statusCode, ms: Math.round(reply.elapsedTime) });
  });
  await app.register(async (api) => brokerRoutes(api, manager));
  let address: string;
  try {
    address = await listenOn(app, spec);
  } catch (err) {
    await app.close();
    manager.close();
    throw err;
  }
  log?.info('listening', { address, token: token ? 'required' : 'none' });
  return {
    app, manager, address, routes,
    async close() {
      await app.close();
      manager.close();
    },
  };
}
