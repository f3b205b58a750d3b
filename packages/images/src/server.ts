import Fastify, { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { timingSafeEqual } from 'node:crypto';
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { isIP, Socket } from 'node:net';
import { algorithms, BLOCK_SIZE, DEFAULT_ALGORITHM, isAlgorithm } from './blkhash';
import { ImageError } from './errors';
import { UPLOAD_PAGE, UPLOAD_PAGE_CSP } from './page';
import { checkSpan } from './ranges';
import { ImageService, ImageServiceOptions } from './service';
import type { Ticket, TicketRequest, TicketStatus } from './tickets';
import type { ImportRequest } from './importer';

/** The imageio API level this server implements (GET /info/). */
export const IMAGEIO_API_VERSION = '2.5.0';
const SERVER_NAME = 'porthole-images 0.1.0';

export interface ImagesPluginOptions {
  service: ImageService;
  /** Mount the ticket control API: only on a Unix socket, or on loopback TCP with a bearer token. */
  control: false | { token?: string };
  /** Unix socket path offered to local clients in OPTIONS (imageio's `unix_socket`). */
  unixSocket?: string;
  /** Web portal origins allowed to call the data API from a browser (CORS). */
  corsOrigins?: string[];
}

type Req = FastifyRequest<{ Params: { ticket: string; id: string }; Querystring: Record<string, string | undefined>; Body: unknown }>;

/** imageio's features; Porthole adds finalize (format check, publish) and cancel (discard a staged upload). */
const READ_FEATURES = ['checksum', 'extents'];
const WRITE_FEATURES = ['checksum', 'extents', 'flush', 'zero'];
const MIN_BLOCK = BLOCK_SIZE / 4;
const MAX_BLOCK = BLOCK_SIZE * 4;

/** Loopback host names and addresses (what "local" means for plain HTTP and the control API). */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  return h === '::1' || h.startsWith('::ffff:127.');
}

/** A control request must come over a Unix socket or from loopback with a local Host (no DNS rebinding) and the token. */
function checkControl(request: FastifyRequest, token?: string): void {
  const remote = request.raw.socket.remoteAddress;
  const host = (request.headers.host ?? 'localhost').replace(/:\d+$/, '');
  if ((remote !== undefined && !isLoopback(remote)) || !isLoopback(host)) throw new ImageError(403, 'the ticket control API is only available locally');
  if (token !== undefined) {
    const given = Buffer.from(String(request.headers.authorization ?? '').replace(/^Bearer /i, ''));
    const want = Buffer.from(token);
    if (given.length !== want.length || !timingSafeEqual(given, want)) throw new ImageError(401, 'the ticket control API needs "Authorization: Bearer <control token>" on TCP');
  }
}

/** Reads a small request body (JSON of PATCH and ticket requests) whatever its content type: curl sends form types. */
async function smallBody(raw: IncomingMessage, limit = 64 * 1024): Promise<unknown> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of raw as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > limit) throw new ImageError(413, `request body over ${limit} bytes`);
    chunks.push(c);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ImageError(400, `Invalid JSON message: ${(err as Error).message}`);
  }
}

const unsatisfiable = (size: number, why: string) => new ImageError(416, why, { 'content-range': `bytes */${size}` });

/** imageio's query enums: a missing value takes the default, an unknown one is 400. */
function choice(q: Record<string, string | undefined>, name: string, values: readonly string[], dflt: string): string {
  const v = q[name];
  if (v === undefined) return dflt;
  if (!values.includes(v)) throw new ImageError(400, `Unsupported value ${JSON.stringify(v)} for "${name}", expecting one of ${JSON.stringify([...values].sort())}`);
  return v;
}

/** imageio's JSON field checks (PATCH): integers must be JSON integers, booleans booleans. */
function field<T>(msg: Record<string, unknown>, name: string, kind: 'int' | 'bool', dflt?: T): T {
  if (!(name in msg)) {
    if (dflt !== undefined) return dflt;
    throw new ImageError(400, `Missing required value for "${name}"`);
  }
  const v = msg[name];
  if (kind === 'int' ? !Number.isSafeInteger(v) || (v as number) < 0 : typeof v !== 'boolean') throw new ImageError(400, `${kind === 'int' ? 'Non-negative integer' : 'Boolean'} required for "${name}": ${JSON.stringify(v)}`);
  return v as T;
}

/**
 * Which span a GET reads, as imageio answers: `a-b` past the ticket's size or past what the image holds is 416 (with
 * the size in Content-Range); `a-` reads to the end; a suffix `-n` reads the last n bytes; several ranges are 416.
 */
function readSpan(header: string | undefined, ticketSize: number, available: number): { start: number; end: number; ranged: boolean } {
  if (header === undefined) return { start: 0, end: available, ranged: false };
  if (header.includes(',')) throw unsatisfiable(available, 'multiple ranges are not supported');
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) throw new ImageError(400, `unsupported Range header "${header.slice(0, 80)}" (one bytes=a-b range only)`);
  if (m[1] === '') {
    const n = Math.min(Number(m[2]), available);
    if (n <= 0) throw unsatisfiable(available, `range ${header} is empty for an image of ${available} bytes`);
    return { start: available - n, end: available, ranged: true };
  }
  const start = Number(m[1]);
  if (m[2] === '') {
    if (start >= available) throw unsatisfiable(available, `range ${header} starts past the end of the image (${available} bytes)`);
    return { start, end: available, ranged: true };
  }
  const end = Number(m[2]) + 1;
  if (end <= start) throw new ImageError(400, `bad Range "${header}": end before start`);
  if (end > ticketSize) throw unsatisfiable(ticketSize, 'Requested range out of allowed range');
  if (end > available) throw unsatisfiable(available, `Requested more bytes than available: ${end} > ${available}`);
  return { start, end, ranged: true };
}

/** Where a PUT writes: the first byte of Content-Range (imageio uses only that; Content-Length gives the length). */
function putOffset(header: string | undefined): number {
  if (header === undefined) return 0;
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(header.trim());
  if (!m) throw new ImageError(400, `bad Content-Range "${header.slice(0, 80)}" (expected "bytes a-b/*" or "bytes a-b/total")`);
  return Number(m[1]);
}

/**
 * The image data API (imageio's, with Porthole's additions) and, with `control`, the ticket control API, as a fastify
 * plugin, so the broker can mount it under a prefix of its own server.
 */
export const imagesPlugin: FastifyPluginAsync<ImagesPluginOptions> = async (app, opts) => {
  const svc = opts.service;
  const origins = new Set(opts.corsOrigins ?? []);
  /** Idle timeout of each connection that used a ticket (imageio's inactivity_timeout), applied between requests. */
  const idle = new WeakMap<Socket, number>();

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _request, reply) => {
    let status: number;
    let message: string;
    if (err instanceof ImageError) {
      status = err.status;
      message = err.message;
      reply.headers(err.headers);
    } else if (err.statusCode && err.statusCode < 500) {
      status = err.statusCode;
      message = err.message;
    } else {
      // File system errors name host paths: only their code goes out.
      status = 500;
      message = `internal error${err.code ? ` (${err.code})` : ''}`;
    }
    // A refused request may still have an unread body: do not reuse the connection.
    reply.header('connection', 'close').code(status).send({ error: message });
  });

  app.addHook('onResponse', async (request) => {
    const ms = idle.get(request.raw.socket);
    if (ms !== undefined && !request.raw.socket.destroyed) request.raw.socket.setTimeout(ms);
  });

  /** A data request on a ticket: the connection counts for it and gets its idle timeout. */
  const use = (t: Ticket, request: FastifyRequest): Ticket => {
    const sock = request.raw.socket;
    if (!t.connections.has(sock)) {
      t.connections.add(sock);
      sock.once('close', () => t.connections.delete(sock));
    }
    idle.set(sock, t.inactivityTimeout * 1000);
    return t;
  };
  const ticketFor = (request: Req, op: 'read' | 'write') => use(svc.authorize(request.params.ticket, op), request);

  await app.register(async (data) => {
    // Bodies are streamed to the image (PUT) or read here (PATCH) whatever their content type: no parser may buffer them.
    data.removeAllContentTypeParsers();
    data.addContentTypeParser('*', (_req, _payload, done) => done(null));

    // CORS for the configured portal origins (the oVirt admin portal uploads from its own origin).
    data.addHook('onRequest', async (request, reply) => {
      const origin = request.headers.origin;
      if (!origin || !origins.has(origin)) return;
      reply.header('access-control-allow-origin', origin).header('vary', 'Origin');
      if (request.method === 'OPTIONS' && request.headers['access-control-request-method']) {
        reply.header('access-control-allow-methods', 'OPTIONS,GET,PUT,PATCH,DELETE')
          .header('access-control-allow-headers', String(request.headers['access-control-request-headers'] ?? '*'))
          .header('access-control-max-age', '86400');
        return reply.code(204).send();
      }
    });

    data.options('/images/:ticket', async (request: Req, reply) => {
      const options: Record<string, unknown> = {};
      if (opts.unixSocket) options.unix_socket = opts.unixSocket;
      if (request.params.ticket === '*') {
        reply.header('allow', 'OPTIONS,GET,PUT,PATCH');
        options.features = [...WRITE_FEATURES, 'finalize', 'cancel'];
        return options;
      }
      const t = ticketFor(request, 'read');
      t.touch();
      const write = t.may('write');
      reply.header('allow', write ? `OPTIONS,GET,HEAD,PUT,PATCH${t.mode === 'new' ? ',DELETE' : ''}` : 'OPTIONS,GET,HEAD');
      options.features = write ? [...WRITE_FEATURES, ...(t.mode !== 'nbd' ? ['finalize'] : []), ...(t.mode === 'new' ? ['cancel'] : [])] : READ_FEATURES;
      options.max_readers = svc.maxConnections;
      options.max_writers = t.backend.maxWriters;
      return options;
    });

    data.route({
      method: ['GET', 'HEAD'],
      url: '/images/:ticket',
      exposeHeadRoute: false,
      handler: async (request: Req, reply: FastifyReply) => {
        if (request.query.close === 'y') reply.header('connection', 'close');
        const t = ticketFor(request, 'read');
        const span = readSpan(request.headers.range as string | undefined, t.size, await svc.available(t));
        reply.code(span.ranged ? 206 : 200).headers({
          'accept-ranges': 'bytes', 'content-type': 'application/octet-stream', 'content-length': span.end - span.start, 'cache-control': 'no-store',
          'content-disposition': `attachment${t.filename ? `; filename=${t.filename}` : ''}`,
        });
        if (span.ranged) reply.header('content-range', `bytes ${span.start}-${span.end - 1}/${t.size}`);
        if (request.method === 'HEAD' || span.end === span.start) {
          t.touch();
          return reply.send();
        }
        const op = t.begin(span.start);
        try {
          const stream = await svc.openRead(t, span, op);
          stream.once('close', () => t.end(op));
          return reply.send(stream);
        } catch (err) {
          t.end(op);
          throw err;
        }
      },
    });

    data.put('/images/:ticket', async (request: Req, reply) => {
      if (request.query.close === 'y') reply.header('connection', 'close');
      if (request.headers['content-length'] === undefined) throw new ImageError(400, 'Content-Length header is required');
      const length = Number(request.headers['content-length']);
      const offset = putOffset(request.headers['content-range'] as string | undefined);
      const flush = choice(request.query, 'flush', ['y', 'n'], 'y') === 'y';
      const t = ticketFor(request, 'write');
      if (offset + length > t.size) throw unsatisfiable(t.size, `write ${offset}+${length} is past the end of the image (${t.size} bytes)`);
      const written = await svc.run(t, offset, (op) => svc.write(t, offset, length, request.raw, op));
      // imageio flushes unless told otherwise (flush=n); a flush of an image written here also runs the quick check.
      if (flush) await svc.run(t, offset, () => svc.flush(t));
      return reply.send({ written, resumeOffset: t.written.contiguousFromZero() });
    });

    data.patch('/images/:ticket', async (request: Req) => {
      const msg = await smallBody(request.raw);
      if (!msg || typeof msg !== 'object' || Array.isArray(msg)) throw new ImageError(400, 'Invalid JSON message: expecting an object');
      const body = msg as Record<string, unknown>;
      const op = choice(body as Record<string, string>, 'op', ['zero', 'flush', 'finalize'], '');
      if (op === '') throw new ImageError(400, 'Missing required value for "op"');
      if (op === 'zero') {
        const size = field<number>(body, 'size', 'int');
        const offset = field<number>(body, 'offset', 'int', 0);
        const flush = field<boolean>(body, 'flush', 'bool', false);
        const t = ticketFor(request, 'write');
        const span = checkSpan(offset, size, t.size);
        await svc.run(t, offset, async () => {
          await svc.zero(t, span);
          if (flush) await svc.flush(t);
        });
        return {};
      }
      const t = ticketFor(request, 'write');
      if (op === 'flush') {
        await svc.run(t, 0, () => svc.flush(t));
        return {};
      }
      return svc.run(t, 0, () => svc.finalize(t));
    });

    // Porthole's cancel of a staged upload (the browser page's Cancel button).
    data.delete('/images/:ticket', async (request: Req) => svc.cancel(ticketFor(request, 'write')));

    data.get('/images/:ticket/extents', async (request: Req) => {
      const t = ticketFor(request, 'read');
      const context = choice(request.query, 'context', ['zero', 'dirty'], 'zero') as 'zero' | 'dirty';
      return svc.run(t, 0, () => svc.extents(t, context));
    });

    data.get('/images/:ticket/checksum/algorithms', async () => ({ algorithms: algorithms() }));

    data.get('/images/:ticket/checksum', async (request: Req) => {
      const q = request.query;
      const ranged = q.offset !== undefined || q.length !== undefined;
      const algorithm = choice(q, 'algorithm', algorithms(), ranged ? 'sha256' : DEFAULT_ALGORITHM);
      if (!isAlgorithm(algorithm)) throw new ImageError(400, `unsupported algorithm ${algorithm}`);
      if (ranged) {
        // Porthole's range checksum: a plain hash of [offset, offset+length), to confirm a resume continues the same file.
        const t = ticketFor(request, 'read');
        const span = checkSpan(Number(q.offset ?? 0), Number(q.length ?? t.size - Number(q.offset ?? 0)), t.size);
        const checksum = await svc.run(t, span.start, () => svc.rangeChecksum(t, span, algorithm));
        return { algorithm, offset: span.start, length: span.end - span.start, checksum };
      }
      const blockSize = q.block_size === undefined ? BLOCK_SIZE : Number(q.block_size);
      if (!Number.isSafeInteger(blockSize)) throw new ImageError(400, `Invalid block size: ${JSON.stringify(q.block_size)}`);
      if (blockSize < MIN_BLOCK || blockSize > MAX_BLOCK) throw new ImageError(400, `Block size out of allowed range: ${MIN_BLOCK}-${MAX_BLOCK}`);
      if (blockSize % 4096) throw new ImageError(400, 'Block size is not aligned to 4096');
      const t = ticketFor(request, 'read');
      return svc.run(t, 0, (op) => svc.checksum(t, algorithm, blockSize, op));
    });

    data.get('/images/:ticket/info', async (request: Req) => svc.ticketInfo(ticketFor(request, 'read')));

    for (const url of ['/info/', '/info']) data.get(url, async () => ({ version: IMAGEIO_API_VERSION, server: SERVER_NAME }));

    data.get('/upload', async (_request, reply) => reply.type('text/html; charset=utf-8').header('content-security-policy', UPLOAD_PAGE_CSP).send(UPLOAD_PAGE));
  });

  if (opts.control) {
    const token = opts.control.token;
    await app.register(async (ctl) => {
      ctl.removeAllContentTypeParsers();
      ctl.addContentTypeParser('*', (_req, _payload, done) => done(null));
      ctl.addHook('onRequest', async (request) => checkControl(request, token));
      // imageio's control API (what vdsm calls).
      ctl.put('/tickets/:id', async (request: Req, reply) => {
        await svc.addImageioTicket(request.params.id, await smallBody(request.raw));
        return reply.code(200).send();
      });
      ctl.get('/tickets/:id', async (request: Req) => svc.ticketStatus(request.params.id));
      ctl.patch('/tickets/:id', async (request: Req, reply) => {
        const patch = await smallBody(request.raw);
        svc.extendTicket(request.params.id, (patch as { timeout?: unknown } | null)?.timeout);
        return reply.code(200).send();
      });
      ctl.delete('/tickets/:id', async (request: Req, reply) => {
        await svc.deleteTicket(request.params.id);
        return reply.code(204).send();
      });
      ctl.delete('/tickets/', async (_request, reply) => {
        await svc.deleteAll();
        return reply.code(204).send();
      });
      for (const method of ['GET', 'PUT', 'PATCH'] as const) {
        ctl.route({ method, url: '/tickets/', handler: async () => { throw new ImageError(400, 'Ticket id is required'); } });
      }
      // Porthole's flow: tickets by image name, the list, imports.
      ctl.post('/tickets', async (request: Req, reply) => reply.code(201).send(await svc.createTicket(await smallBody(request.raw) as TicketRequest)));
      ctl.get('/tickets', async () => svc.listTickets());
      ctl.post('/imports', async (request: Req, reply) => reply.code(201).send(await svc.importUrl(await smallBody(request.raw) as ImportRequest & TicketRequest)));
    });
  }
};

export interface ImageServerOptions extends ImageServiceOptions {
  /** Where to listen: `unix:PATH` or `tcp:HOST:PORT` (port 0 picks one); one or several. */
  listen: string | string[];
  /** PEM certificate and key: required for TCP on a non-loopback address; TCP listeners then speak https. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** Bearer token for the control API on loopback TCP; without one, the control API is on Unix sockets only. */
  controlToken?: string;
  /** Browser origins (e.g. the oVirt admin portal, `https://engine.example:8443`) allowed to use the data API. */
  corsOrigins?: string[];
}

/** Tickets through the TypeScript API (the same operations as the control API). */
export interface TicketApi {
  create(req: TicketRequest): Promise<TicketStatus>;
  /** imageio's `PUT /tickets/<uuid>`. */
  add(ticket: Record<string, unknown>): Promise<TicketStatus>;
  extend(id: string, timeout: number): TicketStatus;
  status(id: string): TicketStatus;
  /** Deletes the ticket (imageio's DELETE): waits for its requests, publishes or checks what it wrote. */
  revoke(id: string): Promise<TicketStatus | undefined>;
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
  await service.recover();
  const unixSocket = listens.find((l): l is { kind: 'unix'; path: string } => l.kind === 'unix')?.path;
  const apps: FastifyInstance[] = [];
  const urls: string[] = [];
  try {
    for (const l of listens) {
      const secure = l.kind === 'tcp' && !!opts.tls;
      const app = Fastify({
        logger: false,
        forceCloseConnections: true,
        requestTimeout: 0,
        // imageio's clients keep a connection idle while they work on their side: keep it as long as a ticket's
        // inactivity timeout (the per-ticket value is set after each response).
        keepAliveTimeout: service.defaultInactivityTimeout * 1000,
        ...(secure ? { https: { cert: opts.tls!.cert, key: opts.tls!.key } } : {}),
      }) as unknown as FastifyInstance;
      apps.push(app);
      const control = l.kind === 'unix' ? {} : isLoopback(l.host) && opts.controlToken ? { token: opts.controlToken } : false;
      await app.register(imagesPlugin, { service, control, unixSocket, corsOrigins: opts.corsOrigins });
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
      add: async (ticket) => {
        await service.addImageioTicket(String(ticket.uuid ?? ''), ticket);
        return service.ticketStatus(String(ticket.uuid));
      },
      extend: (id, timeout) => service.extendTicket(id, timeout),
      status: (id) => service.ticketStatus(id),
      revoke: (id) => service.deleteTicket(id),
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
