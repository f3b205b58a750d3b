import Fastify, { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { isIP } from 'node:net';
import { ImageError } from './errors';
import { UPLOAD_PAGE, UPLOAD_PAGE_CSP } from './page';
import { checkSpan, parseContentRange, parseRange } from './ranges';
import { ImageService, ImageServiceOptions } from './service';
import type { Ticket, TicketRequest, TicketStatus } from './tickets';
import type { ImportRequest } from './importer';

export interface ImagesPluginOptions {
  service: ImageService;
  /** Mount the ticket control routes; only for a listener on a Unix socket or a loopback address. */
  control: boolean;
}

type Req = FastifyRequest<{ Params: { ticket: string; id: string }; Querystring: Record<string, string | undefined>; Body: unknown }>;

const FEATURES = ['extents', 'zero', 'flush', 'finalize', 'cancel', 'checksum'];
const WRITE_FEATURES = ['zero', 'flush', 'finalize', 'cancel'];
/** Parallel connections a client should open per ticket (what the CLI uses at most). */
export const MAX_CONNECTIONS = 8;

/** Loopback host names and addresses (what "local" means for plain HTTP and the control API). */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  return h === '::1' || h.startsWith('::ffff:127.');
}

/** A control request must come over a Unix socket or from loopback, naming a local Host (no DNS rebinding). */
function checkLocal(request: FastifyRequest): void {
  const remote = request.raw.socket.remoteAddress;
  const host = (request.headers.host ?? 'localhost').replace(/:\d+$/, '');
  if ((remote !== undefined && !isLoopback(remote)) || !isLoopback(host)) throw new ImageError(403, 'the ticket control API is only available locally');
}

/**
 * The image data API (and, with `control`, the ticket control API) as a fastify plugin, so the broker can mount it
 * under a prefix of its own server. Routes:
 *   GET|HEAD /images/:ticket (Range) · PUT /images/:ticket (whole, or Content-Range) · PATCH /images/:ticket
 *   {op: zero|flush|finalize} · DELETE /images/:ticket (cancel a staged upload) · OPTIONS /images/:ticket|*
 *   GET /images/:ticket/{info,extents,checksum} · GET /upload (browser page)
 *   control: POST/GET /tickets, GET/PATCH/DELETE /tickets/:id, POST /imports
 */
export const imagesPlugin: FastifyPluginAsync<ImagesPluginOptions> = async (app, opts) => {
  const svc = opts.service;
  app.setErrorHandler((err: Error & { statusCode?: number }, _request, reply) => {
    const status = err instanceof ImageError ? err.status : err.statusCode && err.statusCode < 500 ? err.statusCode : 500;
    if (err instanceof ImageError) reply.headers(err.headers);
    // A refused request may still have an unread body: do not reuse the connection.
    reply.header('connection', 'close').code(status).send({ error: err.message });
  });

  const anyOp = (id: string): Ticket => {
    const t = svc.get(id);
    t.authorize(t.ops.includes('read') ? 'read' : 'write');
    return t;
  };
  const tracked = async <T>(t: Ticket, request: FastifyRequest, work: () => Promise<T>): Promise<T> => {
    const untrack = svc.track(t, request.raw.socket);
    try {
      return await work();
    } finally {
      untrack();
    }
  };

  app.route({
    method: ['GET', 'HEAD'],
    url: '/images/:ticket',
    exposeHeadRoute: false,
    handler: async (request: Req, reply: FastifyReply) => {
      const t = svc.authorize(request.params.ticket, 'read');
      const ranged = request.headers.range !== undefined;
      const span = ranged ? parseRange(String(request.headers.range), t.size) : { start: 0, end: t.size };
      reply.code(ranged ? 206 : 200).headers({ 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream', 'content-length': span.end - span.start, 'cache-control': 'no-store' });
      if (ranged) reply.header('content-range', `bytes ${span.start}-${span.end - 1}/${t.size}`);
      if (request.method === 'HEAD' || span.end === span.start) return reply.send();
      const stream = await svc.openRead(t, span);
      stream.once('close', svc.track(t, request.raw.socket));
      return reply.send(stream);
    },
  });

  await app.register(async (data) => {
    // Bodies of PUT are streamed straight to the image whatever their content type: no parser may buffer them.
    data.removeAllContentTypeParsers();
    data.addContentTypeParser('*', (_req, _payload, done) => done(null));
    data.put('/images/:ticket', async (request: Req, reply) => {
      const t = svc.authorize(request.params.ticket, 'write');
      if (request.headers['content-length'] === undefined) throw new ImageError(411, 'Content-Length is required');
      const length = Number(request.headers['content-length']);
      const cr = request.headers['content-range'];
      const span = cr ? parseContentRange(cr, t.size) : { start: 0, end: length };
      if (!cr && length > t.size) throw new ImageError(416, `body of ${length} bytes is larger than the image (${t.size} bytes)`, { 'content-range': `bytes */${t.size}` });
      if (span.end - span.start !== length) throw new ImageError(400, `Content-Range covers ${span.end - span.start} bytes but Content-Length is ${length}`);
      const written = await tracked(t, request, () => svc.write(t, span.start, request.raw));
      if (request.query.flush === 'y') await svc.flush(t);
      return reply.send({ written, resumeOffset: t.written.contiguousFromZero() });
    });
  });

  app.patch('/images/:ticket', async (request: Req) => {
    const body = (request.body ?? {}) as { op?: string; offset?: number; size?: number; flush?: boolean };
    const t = svc.authorize(request.params.ticket, 'write');
    switch (body.op) {
      case 'zero': {
        const offset = body.offset ?? 0;
        await tracked(t, request, () => svc.zero(t, checkSpan(offset, body.size ?? t.size - (offset as number), t.size)));
        if (body.flush) await svc.flush(t);
        return {};
      }
      case 'flush':
        await svc.flush(t);
        return {};
      case 'finalize':
        return tracked(t, request, () => svc.finalize(t));
      default:
        throw new ImageError(400, `unknown op ${JSON.stringify(body.op)} (zero, flush, finalize)`);
    }
  });

  app.delete('/images/:ticket', async (request: Req) => svc.cancel(svc.authorize(request.params.ticket, 'write')));

  // OPTIONS * tells what the server can do; OPTIONS on a ticket narrows it to what that ticket allows.
  app.options('/images/:ticket', async (request: Req, reply) => {
    const ops = request.params.ticket === '*' ? ['read', 'write'] : anyOp(request.params.ticket).ops;
    const methods = ['OPTIONS', ...(ops.includes('read') ? ['GET', 'HEAD'] : []), ...(ops.includes('write') ? ['PUT', 'PATCH', 'DELETE'] : [])];
    reply.header('allow', methods.join(', '));
    const features = ops.includes('write') ? FEATURES : FEATURES.filter((f) => !WRITE_FEATURES.includes(f));
    return { features, ranges: 'bytes', maxConnections: MAX_CONNECTIONS };
  });

  app.get('/images/:ticket/info', async (request: Req) => anyOp(request.params.ticket).status());
  app.get('/images/:ticket/extents', async (request: Req) => svc.extents(anyOp(request.params.ticket)));
  app.get('/images/:ticket/checksum', async (request: Req) => {
    const t = anyOp(request.params.ticket);
    const span = checkSpan(Number(request.query.offset ?? 0), Number(request.query.length ?? t.size), t.size);
    // Without read, hashes of small ranges would reveal the image byte by byte: only what this ticket wrote may be hashed.
    if (!t.ops.includes('read') && !t.written.contains(span.start, span.end)) throw new ImageError(403, 'a write-only ticket can only checksum ranges it has written');
    return { offset: span.start, length: span.end - span.start, sha256: await svc.checksum(t, span) };
  });

  app.get('/upload', async (_request, reply) => reply.type('text/html; charset=utf-8').header('content-security-policy', UPLOAD_PAGE_CSP).send(UPLOAD_PAGE));

  if (opts.control) {
    await app.register(async (ctl) => {
      ctl.addHook('onRequest', async (request) => checkLocal(request));
      ctl.post('/tickets', async (request: Req, reply) => reply.code(201).send(await svc.createTicket(request.body as TicketRequest)));
      ctl.get('/tickets', async () => svc.listTickets());
      ctl.get('/tickets/:id', async (request: Req) => svc.ticketStatus(request.params.id));
      ctl.patch('/tickets/:id', async (request: Req) => svc.extendTicket(request.params.id, (request.body as { timeout?: number } | undefined)?.timeout as number));
      ctl.delete('/tickets/:id', async (request: Req) => svc.revokeTicket(request.params.id));
      ctl.post('/imports', async (request: Req, reply) => reply.code(201).send(await svc.importUrl(request.body as ImportRequest & TicketRequest)));
    });
  }
};

export interface ImageServerOptions extends ImageServiceOptions {
  /** Where to listen: `unix:PATH` or `tcp:HOST:PORT` (port 0 picks one); one or several. */
  listen: string | string[];
  /** PEM certificate and key: required for TCP on a non-loopback address; TCP listeners then speak https. */
  tls?: { cert: string | Buffer; key: string | Buffer };
}

/** Tickets through the TypeScript API (the same operations as the control API). */
export interface TicketApi {
  create(req: TicketRequest): Promise<TicketStatus>;
  extend(id: string, timeout: number): TicketStatus;
  status(id: string): TicketStatus;
  revoke(id: string): Promise<TicketStatus>;
  list(): TicketStatus[];
}

export interface ImageServer {
  /** Base URL of the first listener: `https://host:port`, `http://127.0.0.1:port` or `unix:PATH`. */
  url: string;
  urls: string[];
  tickets: TicketApi;
  importUrl: ImageService['importUrl'];
  service: ImageService;
  close(): Promise<void>;
}

type Listen = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

export function parseListen(spec: string, tls: boolean): Listen {
  if (spec.startsWith('unix:') && spec.length > 5) return { kind: 'unix', path: spec.slice(5) };
  const m = /^tcp:(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(spec);
  if (!m || Number(m[2]) > 65535) throw new Error(`bad listen address "${spec}" (expected unix:PATH or tcp:HOST:PORT)`);
  const host = m[1].replace(/^\[|\]$/g, '');
  if (!tls && !isLoopback(host)) {
    throw new Error(`refusing plain HTTP on ${host}: plain HTTP is only allowed on a Unix socket or a loopback address; configure a TLS certificate and key`);
  }
  return { kind: 'tcp', host, port: Number(m[2]) };
}

/** Starts the image server over `storageDir` on every listen address (each its own fastify instance, one service). */
export async function createImageServer(opts: ImageServerOptions): Promise<ImageServer> {
  const listens = (Array.isArray(opts.listen) ? opts.listen : [opts.listen]).map((s) => parseListen(s, !!opts.tls));
  if (!listens.length) throw new Error('no listen address given');
  const service = new ImageService(opts);
  const apps: FastifyInstance[] = [];
  const urls: string[] = [];
  try {
    for (const l of listens) {
      const secure = l.kind === 'tcp' && !!opts.tls;
      const app = Fastify({
        logger: false,
        forceCloseConnections: true,
        requestTimeout: 0,
        ...(secure ? { https: { cert: opts.tls!.cert, key: opts.tls!.key } } : {}),
      }) as unknown as FastifyInstance;
      apps.push(app);
      await app.register(imagesPlugin, { service, control: l.kind === 'unix' || isLoopback(l.host) });
      if (l.kind === 'unix') {
        removeStaleSocket(l.path);
        await app.listen({ path: l.path });
        chmodSync(l.path, 0o600);
        urls.push(`unix:${l.path}`);
      } else {
        await app.listen({ host: l.host, port: l.port });
        const addr = app.server.address();
        const port = typeof addr === 'object' && addr ? addr.port : l.port;
        urls.push(`${secure ? 'https' : 'http'}://${isIP(l.host) === 6 ? `[${l.host}]` : l.host}:${port}`);
      }
    }
  } catch (err) {
    service.close();
    await Promise.all(apps.map((a) => a.close()));
    throw err;
  }
  return {
    url: urls[0],
    urls,
    service,
    tickets: {
      create: (req) => service.createTicket(req),
      extend: (id, timeout) => service.extendTicket(id, timeout),
      status: (id) => service.ticketStatus(id),
      revoke: (id) => service.revokeTicket(id),
      list: () => service.listTickets(),
    },
    importUrl: (req) => service.importUrl(req),
    close: async () => {
      service.close();
      await Promise.all(apps.map((a) => a.close()));
    },
  };
}

/** A socket file left by a previous run would make listen fail with EADDRINUSE; anything else at the path is kept. */
function removeStaleSocket(path: string): void {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
