import { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { PassThrough } from 'node:stream';
import { describeError } from '../client';
import { AgentInstallOptions, installAgent } from '../agent-install';
import { errorCodeName, PortholeError } from '@porthole/protocol';
import { connectorForTarget } from '../targets';
import { BROKER_VERSION } from '../version';
import { OutputChunk, TaskError, TaskRecord } from './journal';
import { CHANNEL_PATH, CHANNEL_UPGRADE } from '../route';
import { agentInstallRequestSchema, channelQuerySchema, execRequestSchema, idParamsSchema, injectQuerySchema, injectUrlRequestSchema, listQuerySchema, openApiDocument, outputQuerySchema } from './openapi';
import { ExecParams, InjectParams, TaskManager } from './tasks';
import { VmLinks } from './vms';

/** An error answered with its HTTP status and a code clients can test. */
export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

/** HTTP status of a task error's code (the agent's cause, e.g. POLICY_DENIED → 403). */
const STATUS: Record<string, number> = {
  INVALID_ARGUMENT: 400, NO_SUCH_USER: 400, NO_SUCH_GROUP: 400, NOT_A_DIRECTORY: 400, IS_A_DIRECTORY: 400,
  POLICY_DENIED: 403, PERMISSION_DENIED: 403, READ_ONLY_FS: 403, NOT_FOUND: 404, ALREADY_EXISTS: 409, CANCELLED: 409,
  CHECKSUM_MISMATCH: 422, TIMEOUT: 504, DISK_FULL: 507, RESOURCE_EXHAUSTED: 503, SESSION_RESET: 502, PROTOCOL: 502,
};

/** A reader this far behind the live output is cut off with an `overrun` line (it reconnects at `next`). */
const MAX_UNSENT = 8 * 1024 * 1024;

type Req<T extends { Params?: unknown; Querystring?: unknown; Body?: unknown }> = FastifyRequest<T>;

/** The target must parse and its agent answer before a task exists, so the caller gets 400/502 at once. */
async function reach(manager: TaskManager, target: string): Promise<void> {
  try {
    // qga: targets are qemu-guest-agent sockets, reached by the task manager itself (connectGuest).
    if (!target.startsWith('qga:')) connectorForTarget(target);
  } catch (err) {
    throw new ApiError(400, 'INVALID_ARGUMENT', (err as Error).message);
  }
  try {
    await manager.reach(target);
  } catch (err) {
    throw new ApiError(502, 'UNREACHABLE', `${target}: ${describeError(err)}`);
  }
}

function found(manager: TaskManager, id: string): TaskRecord {
  const t = manager.get(id);
  if (!t) throw new ApiError(404, 'NOT_FOUND', `no task ${id}`);
  return t;
}

function failedAnswer(reply: FastifyReply, error: TaskError, task: TaskRecord): FastifyReply {
  return reply.code(STATUS[error.code] ?? 500).send({ error, task });
}

/**
 * The REST API. Output streams as NDJSON: `output` lines carry `offset` and `next`, so a client that lost its
 * connection asks again with `offset=next` and gets exactly the bytes it missed (while they are retained).
 */
export async function brokerRoutes(app: FastifyInstance, manager: TaskManager, vms: VmLinks): Promise<void> {
  const streams = new Set<() => void>();
  // Open output streams would hold the server open; they end (without an end line) when it closes.
  app.addHook('preClose', async () => { for (const end of [...streams]) end(); });

  // The body of a streamed injection goes to the guest as it arrives; no parser may buffer it.
  app.addContentTypeParser('application/octet-stream', (_request, _payload, done) => done(null));

  app.setErrorHandler((err: Error & { statusCode?: number; validation?: unknown }, _request, reply) => {
    const e = err instanceof ApiError ? err
      : err.validation ? new ApiError(400, 'INVALID_ARGUMENT', err.message)
      : err.statusCode && err.statusCode < 500 ? new ApiError(err.statusCode, 'INVALID_ARGUMENT', err.message)
      : new ApiError(500, 'INTERNAL', err.message);
    // A refused upload may still have body bytes in flight: do not reuse the connection.
    reply.header('connection', 'close').code(e.status).send({ error: { code: e.code, message: e.message } });
  });

  app.get('/openapi.json', async () => openApiDocument());

  app.get('/v1/health', async () => ({ ok: true, version: BROKER_VERSION, running: manager.list({ status: 'running' }).length, ...vms.stats() }));

  // The upgrade itself is the server's (server.ts): a plain request only learns how to ask.
  app.get(CHANNEL_PATH, { schema: { querystring: channelQuerySchema } }, async (_request, reply) => reply.code(426).header('upgrade', CHANNEL_UPGRADE)
    .send({ error: { code: 'INVALID_ARGUMENT', message: `this path switches to the Porthole protocol: send Connection: Upgrade and Upgrade: ${CHANNEL_UPGRADE}` } }));

  // Progress as it happens, the result or error last: an installation takes minutes (the agent goes through qemu-ga).
  app.post('/v1/agent/install', { schema: { body: agentInstallRequestSchema } }, async (request: Req<{ Body: Omit<AgentInstallOptions, 'progress'> }>, reply) => {
    const out = new PassThrough();
    const line = (o: unknown) => { if (!out.writableEnded) out.write(`${JSON.stringify(o)}\n`); };
    installAgent({ ...request.body, progress: (step) => line({ type: 'progress', step }) }).then(
      (result) => line({ type: 'end', result }),
      (err: unknown) => { const e = PortholeError.from(err); line({ type: 'error', error: { code: errorCodeName(e.code), message: describeError(e), rule: e.rule } }); },
    ).finally(() => out.end());
    return reply.code(200).header('content-type', 'application/x-ndjson').header('cache-control', 'no-store').send(out);
  });

  app.get('/v1/tasks', { schema: { querystring: listQuerySchema } }, async (request: Req<{ Querystring: { status?: string; kind?: string; target?: string; limit?: number } }>) =>
    ({ tasks: manager.list(request.query) }));

  app.get('/v1/tasks/:id', { schema: { params: idParamsSchema } }, async (request: Req<{ Params: { id: string } }>) => found(manager, request.params.id));

  app.post('/v1/tasks/:id/cancel', { schema: { params: idParamsSchema } }, async (request: Req<{ Params: { id: string } }>, reply) => {
    const t = found(manager, request.params.id);
    if (!manager.cancel(t.id)) throw new ApiError(409, 'NOT_RUNNING', `task ${t.id} is not running (${t.status})`);
    return reply.code(202).send(manager.get(t.id));
  });

  app.post('/v1/tasks/exec', { schema: { body: execRequestSchema } }, async (request: Req<{ Body: Omit<ExecParams, 'stdin'> & { stdin?: string } }>, reply) => {
    const body = request.body;
    await reach(manager, body.target);
    const record = await manager.startExec({ ...body, stdin: body.stdin === undefined ? undefined : Buffer.from(body.stdin, 'base64') });
    return reply.code(202).send(record);
  });

  app.post('/v1/tasks/inject', {
    schema: { querystring: injectQuerySchema, body: { content: { 'application/json': { schema: injectUrlRequestSchema } } } },
  }, async (request: Req<{ Querystring: Record<string, string | undefined>; Body: (InjectParams & { url: string; mode?: string }) | undefined }>, reply) => {
    if (request.headers['content-type']?.startsWith('application/json')) {
      const { url, mode, ...rest } = request.body!;
      await reach(manager, rest.target);
      const { record } = await manager.startInject({ ...rest, mode: mode === undefined ? undefined : parseInt(mode, 8) }, { url });
      return reply.code(202).send(record);
    }
    if (!request.headers['content-type']?.startsWith('application/octet-stream')) {
      throw new ApiError(415, 'INVALID_ARGUMENT', 'send the file as application/octet-stream (parameters in the query) or JSON naming an https url');
    }
    const q = request.query;
    if (!q.target || !q.path) throw new ApiError(400, 'INVALID_ARGUMENT', 'a streamed injection needs target and path in the query');
    await reach(manager, q.target);
    const length = request.headers['content-length'];
    const { done } = await manager.startInject({
      target: q.target, path: q.path, owner: q.owner, group: q.group, mode: q.mode === undefined ? undefined : parseInt(q.mode, 8),
      mkdir: q.mkdir === 'true' || q.mkdir === '1', overwrite: q.overwrite as InjectParams['overwrite'],
      size: length === undefined ? undefined : Number(length),
    }, request.raw);
    const final = await done;
    if (final.status === 'done') return reply.code(200).send(final);
    return failedAnswer(reply.header('connection', 'close'), final.error!, final);
  });

  app.get('/v1/tasks/:id/output', { schema: { params: idParamsSchema, querystring: outputQuerySchema } },
    async (request: Req<{ Params: { id: string }; Querystring: { offset: number; follow: boolean; encoding: 'base64' | 'utf8' } }>, reply) => {
      const task = found(manager, request.params.id);
      const { offset, follow, encoding } = request.query;
      const out = new PassThrough();
      let unsubscribe: (() => void) | undefined;
      const end = (last?: unknown) => {
        unsubscribe?.();
        streams.delete(end);
        if (last) out.write(`${JSON.stringify(last)}\n`);
        out.end();
      };
      const line = (o: unknown) => {
        if (out.writableEnded) return;
        out.write(`${JSON.stringify(o)}\n`);
      };
      const chunk = (c: OutputChunk) => {
        if (out.writableEnded) return;
        if (out.writableLength > MAX_UNSENT) return end({ type: 'overrun', next: c.offset });
        line({ type: 'output', fd: c.fd, offset: c.offset, next: c.offset + c.data.length, ...(encoding === 'utf8' ? { text: c.data.toString('utf8') } : { data: c.data.toString('base64') }) });
      };
      if (offset < task.outputRetainedFrom) line({ type: 'gap', from: offset, to: task.outputRetainedFrom });
      streams.add(end);
      reply.raw.once('close', () => { unsubscribe?.(); streams.delete(end); });
      if (follow) {
        unsubscribe = manager.watch(task.id, offset, { output: chunk, progress: (p) => line({ type: 'progress', ...(p as object) }), end: (t) => end({ type: 'end', task: t }) });
        if (!unsubscribe) end({ type: 'end', task: manager.get(task.id) });
      } else {
        for (const c of manager.journal.output(task.id, offset)) chunk(c);
        end(task.status === 'running' ? undefined : { type: 'end', task });
      }
      return reply.code(200).header('content-type', 'application/x-ndjson').header('cache-control', 'no-store').send(out);
    });
}
