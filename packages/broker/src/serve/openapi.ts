import { BROKER_VERSION } from '../version';

// The request schemas are used twice: fastify validates requests with them and /openapi.json publishes them.

const principal = { anyOf: [{ type: 'string', minLength: 1 }, { type: 'integer', minimum: 0 }] };
const target = { type: 'string', description: 'unix:/path/to/chardev.sock, libvirt:DOMAIN, serial:/dev/ttyX[@BAUD] or xen:DOMID', examples: ['unix:/run/vm1/porthole.sock'] };

export const execRequestSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['target'],
  properties: {
    target,
    argv: { type: 'array', minItems: 1, items: { type: 'string' }, description: 'program and arguments (no shell)' },
    shell: { type: 'string', minLength: 1, description: 'a command line for /bin/sh -c' },
    env: { type: 'object', additionalProperties: { type: 'string' }, description: 'environment entries; the journal keeps their names only' },
    secrets: { type: 'array', items: { type: 'string' }, description: 'strings replaced by *** in the journaled command' },
    cwd: { type: 'string' },
    user: principal,
    group: principal,
    timeoutMs: { type: 'integer', minimum: 0, description: 'kill the command\'s process group after this long' },
    stdin: { type: 'string', contentEncoding: 'base64', description: 'bytes for stdin (base64); stdin is closed after them' },
  },
  oneOf: [{ required: ['argv'] }, { required: ['shell'] }],
} as const;

const injectFields = {
  target,
  path: { type: 'string', pattern: '^/', description: 'absolute path in the guest' },
  owner: principal,
  group: principal,
  mode: { type: 'string', pattern: '^0?[0-7]{3,4}$', description: 'octal permissions, e.g. "0644"' },
  mkdir: { type: 'boolean', description: 'create missing parent directories' },
  overwrite: { type: 'string', enum: ['replace', 'fail-if-exists', 'append'] },
} as const;

export const injectUrlRequestSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['target', 'path', 'url'],
  properties: { ...injectFields, url: { type: 'string', pattern: '^https://', description: 'the broker fetches the content from this https URL' } },
} as const;

/** Query of a streamed injection (the body is the file's content). */
export const injectQuerySchema = {
  type: 'object',
  properties: { ...injectFields, mkdir: { type: 'string', enum: ['true', 'false', '1', '0'] }, owner: { type: 'string' }, group: { type: 'string' } },
} as const;

/** Query of the protocol upgrade: the VM, and how long the daemon may wait for its agent. */
export const agentInstallRequestSchema = {
  type: 'object',
  required: ['target'],
  additionalProperties: false,
  properties: {
    target: { type: 'string', description: 'qga:/path/to/qga.sock (plain QEMU, with qmp) or libvirt:[URI/]DOMAIN' },
    qmp: { type: 'string', description: 'plain QEMU: the VM\'s QMP socket' },
    socket: { type: 'string', description: 'plain QEMU: the new port\'s socket' },
    deb: { type: 'string', description: 'the agent .deb on the broker\'s host, used when the guest has dpkg' },
    executable: { type: 'string', description: 'the agent\'s single executable on the broker\'s host' },
  },
} as const;

export const channelQuerySchema = {
  type: 'object',
  required: ['target'],
  properties: {
    target,
    timeoutMs: { type: 'integer', minimum: 1, description: 'how long to wait for the VM\'s agent (default 30000)' },
  },
} as const;

export const listQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    status: { type: 'string', enum: ['running', 'done', 'failed', 'cancelled', 'interrupted'] },
    kind: { type: 'string', enum: ['exec', 'inject'] },
    target: { type: 'string' },
    limit: { type: 'integer', minimum: 1 },
  },
} as const;

export const outputQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    offset: { type: 'integer', minimum: 0, default: 0, description: 'first byte of output to send (the `next` of the last line read)' },
    follow: { type: 'boolean', default: true, description: 'keep the response open and stream output live until the task ends' },
    encoding: { type: 'string', enum: ['base64', 'utf8'], default: 'base64', description: 'how output lines carry their bytes' },
  },
} as const;

export const idParamsSchema = { type: 'object', required: ['id'], properties: { id: { type: 'string' } } } as const;

const taskSchema = {
  type: 'object',
  required: ['id', 'target', 'kind', 'params', 'status', 'createdAt', 'outputBytes', 'outputRetainedFrom'],
  properties: {
    id: { type: 'string' },
    target: { type: 'string' },
    kind: { type: 'string', enum: ['exec', 'inject'] },
    params: { type: 'object', description: 'the request without env values, secrets or file contents' },
    status: { type: 'string', enum: ['running', 'done', 'failed', 'cancelled', 'interrupted'], description: 'interrupted: the broker stopped while the task ran' },
    createdAt: { type: 'string', format: 'date-time' },
    endedAt: { type: 'string', format: 'date-time' },
    durationMs: { type: 'integer' },
    result: {
      type: 'object',
      description: 'exec: {code, signal, durationMs, timedOut, cancelled}; inject: {path, size, sha256, uid, gid, mode, resumedFrom}',
    },
    error: { $ref: '#/components/schemas/Error' },
    outputBytes: { type: 'integer', description: 'output the task produced so far' },
    outputRetainedFrom: { type: 'integer', description: 'output before this offset was dropped (retention limit)' },
  },
};

const errorSchema = {
  type: 'object',
  required: ['code', 'message'],
  properties: {
    code: { type: 'string', examples: ['POLICY_DENIED', 'NOT_FOUND', 'UNAUTHORIZED'] },
    message: { type: 'string' },
    rule: { type: 'string', description: 'the guest policy rule that refused the request' },
  },
};

const outputLineSchema = {
  oneOf: [
    { type: 'object', description: 'output bytes', properties: { type: { const: 'output' }, fd: { enum: ['stdout', 'stderr'] }, offset: { type: 'integer' }, next: { type: 'integer' }, data: { type: 'string' }, text: { type: 'string' } } },
    { type: 'object', description: 'output from..to was dropped by the retention limit', properties: { type: { const: 'gap' }, from: { type: 'integer' }, to: { type: 'integer' } } },
    { type: 'object', description: 'injection progress', properties: { type: { const: 'progress' }, bytes: { type: 'integer' }, total: { type: 'integer' } } },
    { type: 'object', description: 'the last line: the finished task', properties: { type: { const: 'end' }, task: { $ref: '#/components/schemas/Task' } } },
    { type: 'object', description: 'the reader fell too far behind; reconnect with offset=next', properties: { type: { const: 'overrun' }, next: { type: 'integer' } } },
  ],
};

const json = (schema: unknown) => ({ content: { 'application/json': { schema } } });
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const errors = (...codes: number[]) => Object.fromEntries(codes.map((c) => [String(c), { description: ERROR_TEXT[c], ...json(ref('ErrorBody')) }]));
const ERROR_TEXT: Record<number, string> = {
  400: 'bad request', 401: 'missing or wrong bearer token', 403: 'refused by the guest owner\'s policy', 404: 'no such task',
  409: 'the task is not running / the file exists', 426: 'send Connection: Upgrade, Upgrade: porthole', 502: 'the VM\'s agent is unreachable', 504: 'timed out',
};
const queryParams = (schema: { properties: Record<string, unknown>; required?: readonly string[] }) =>
  Object.entries(schema.properties).map(([name, s]) => ({ name, in: 'query', required: schema.required?.includes(name) ?? false, schema: s }));
const idParam = { name: 'id', in: 'path', required: true, schema: { type: 'string' } };

/** The OpenAPI 3.1 document of the broker's REST API. */
export function openApiDocument(): Record<string, unknown> {
  return {
    openapi: '3.1.0',
    info: {
      title: 'Porthole broker',
      version: BROKER_VERSION.replace(/^porthole /, ''),
      description: 'Inject files into VMs and run commands in them over the hypervisor\'s channel. A bearer token is required when the broker listens on TCP.',
    },
    security: [{ bearer: [] }],
    paths: {
      '/openapi.json': { get: { summary: 'this document', security: [], responses: { 200: { description: 'OpenAPI document', ...json({ type: 'object' }) } } } },
      '/v1/health': {
        get: {
          summary: 'broker version, running tasks, VMs with an open session and the clients joined to them',
          responses: {
            200: { description: 'ok', ...json({ type: 'object', properties: { ok: { type: 'boolean' }, version: { type: 'string' }, running: { type: 'integer' }, vms: { type: 'integer' }, clients: { type: 'integer' } } }) },
            ...errors(401),
          },
        },
      },
      '/v1/channel': {
        get: {
          summary: 'the Porthole protocol to a VM through this broker (what `porthole` and the library use when the broker runs): '
            + 'with `Connection: Upgrade` and `Upgrade: porthole` the broker reaches the VM, answers 101 and relays the protocol on this connection',
          parameters: queryParams(channelQuerySchema),
          responses: {
            101: { description: 'switched: the connection carries Porthole frames; the broker speaks once the client\'s hello arrived' },
            ...errors(400, 401, 426, 502, 504),
          },
        },
      },
      '/v1/agent/install': {
        post: {
          summary: 'turn a VM that has only qemu-guest-agent into a Porthole VM, live: hot-plug the port, install and start the agent through qemu-ga. '
            + 'NDJSON: {type: progress, step} lines, then {type: end, result} or {type: error, error}',
          requestBody: { required: true, ...json(agentInstallRequestSchema) },
          responses: { 200: { description: 'progress lines, then the result or the error', content: { 'application/x-ndjson': { schema: { type: 'object' } } } }, ...errors(400, 401) },
        },
      },
      '/v1/tasks': {
        get: {
          summary: 'list tasks, newest first (including tasks of earlier broker runs)',
          parameters: queryParams(listQuerySchema),
          responses: { 200: { description: 'tasks', ...json({ type: 'object', properties: { tasks: { type: 'array', items: ref('Task') } } }) }, ...errors(400, 401) },
        },
      },
      '/v1/tasks/exec': {
        post: {
          summary: 'start a command in the guest',
          requestBody: { required: true, ...json(ref('ExecRequest')) },
          responses: { 202: { description: 'started; follow /v1/tasks/{id}/output', ...json(ref('Task')) }, ...errors(400, 401, 502) },
        },
      },
      '/v1/tasks/inject': {
        post: {
          summary: 'inject a file: the request body is its content (application/octet-stream, parameters in the query), or JSON naming an https URL',
          parameters: queryParams(injectQuerySchema),
          requestBody: {
            required: true,
            content: {
              'application/octet-stream': { schema: { type: 'string', format: 'binary' } },
              'application/json': { schema: ref('InjectUrlRequest') },
            },
          },
          responses: {
            200: { description: 'streamed body: the injection finished (the task, status done)', ...json(ref('Task')) },
            202: { description: 'URL: started; follow /v1/tasks/{id}/output for progress', ...json(ref('Task')) },
            ...errors(400, 401, 403, 409, 502),
          },
        },
      },
      '/v1/tasks/{id}': {
        get: { summary: 'one task', parameters: [idParam], responses: { 200: { description: 'the task', ...json(ref('Task')) }, ...errors(401, 404) } },
      },
      '/v1/tasks/{id}/cancel': {
        post: { summary: 'cancel a running task (an exec gets SIGTERM, then SIGKILL)', parameters: [idParam], responses: { 202: { description: 'cancelling', ...json(ref('Task')) }, ...errors(401, 404, 409) } },
      },
      '/v1/tasks/{id}/output': {
        get: {
          summary: 'the task\'s output as NDJSON: replayed from `offset`, then live until the task ends (last line: type end)',
          parameters: [idParam, ...queryParams(outputQuerySchema)],
          responses: { 200: { description: 'one JSON object per line', content: { 'application/x-ndjson': { schema: ref('OutputLine') } } }, ...errors(400, 401, 404) },
        },
      },
    },
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      schemas: {
        ExecRequest: execRequestSchema,
        InjectUrlRequest: injectUrlRequestSchema,
        Task: taskSchema,
        Error: errorSchema,
        ErrorBody: { type: 'object', required: ['error'], properties: { error: ref('Error'), task: ref('Task') } },
        OutputLine: outputLineSchema,
      },
    },
  };
}
