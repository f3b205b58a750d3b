// The qemu-guest-agent back end: a VM whose image has qemu-ga and no Porthole agent, driven with the
// same calls as PortholeClient (info, exec, installFile, readFile). What qemu-ga cannot do is said, not
// faked: output comes when the command exits (and qemu-ga caps it), files travel as base64 JSON.
import { EventEmitter } from 'node:events';
import { createHash, randomUUID } from 'node:crypto';
import { constants as osConstants } from 'node:os';
import { posix } from 'node:path';
import { PassThrough, Readable, Writable } from 'node:stream';
import { v1, PortholeError, errors } from '@porthole/protocol';
import { QgaClient, QgaCommands, QgaError } from '@porthole/qga';
import type { ExecCommand, ExecOptions, ExitStatus, InstallOptions, InstallResult, InstallSource, ReadResult } from './client';
import { Task, UnreachableError } from './client';
import type { Route } from './route';

const E = v1.ErrorCode;

/** The port qemu-guest-agent opens in the guest. */
export const QGA_PORT_NAME = 'org.qemu.guest_agent.0';

/** qemu-ga's refusal (or failure) as the Porthole error it stands for. */
export function qgaFailure(err: unknown): PortholeError {
  if (err instanceof PortholeError) return err;
  if (!(err instanceof QgaError)) return PortholeError.from(err);
  if (err.disabled) {
    return new PortholeError(E.ERROR_CODE_POLICY_DENIED, err.desc, { rule: `qemu-ga --block-rpcs ${err.command}`, cause: err });
  }
  if (err.unknown) return new PortholeError(E.ERROR_CODE_UNSUPPORTED, `this guest's qemu-guest-agent has no ${err.command} (${err.desc})`, { cause: err });
  const code = /no such file|not found/i.test(err.desc) ? E.ERROR_CODE_NOT_FOUND
    : /permission denied/i.test(err.desc) ? E.ERROR_CODE_PERMISSION_DENIED : E.ERROR_CODE_INTERNAL;
  return new PortholeError(code, err.message, { cause: err });
}

interface GuestInfo {
  version: string;
  supported_commands: Array<{ name: string; enabled: boolean }>;
}

interface OsInfo {
  id?: string;
  'pretty-name'?: string;
  'kernel-release'?: string;
  machine?: string;
}

/** What `exec` through qemu-ga adds to the exit status. */
export interface QgaExitStatus extends ExitStatus {
  /** Always false: qemu-ga hands out a command's output once it exited. */
  streamed: false;
  /** qemu-ga dropped output beyond its cap. */
  outputTruncated: boolean;
}

async function bufferOf(source: InstallSource): Promise<Buffer> {
  if (Buffer.isBuffer(source) || source instanceof Uint8Array) return Buffer.from(source);
  if (typeof source === 'string' || (typeof source === 'object' && 'path' in source && !(source instanceof Readable))) {
    const { readFile } = await import('node:fs/promises');
    const path = typeof source === 'string' ? source : source.path;
    return readFile(path).catch((err: Error) => { throw new PortholeError(E.ERROR_CODE_NOT_FOUND, `cannot read local file ${path}: ${err.message}`); });
  }
  if (source instanceof Readable) {
    const parts: Buffer[] = [];
    for await (const c of source) parts.push(Buffer.isBuffer(c) ? c : Buffer.from(c));
    return Buffer.concat(parts);
  }
  throw errors.unsupported('qemu-guest-agent targets take a file, a buffer or a stream (no URL sources)');
}

/** A VM reached through its qemu-guest-agent port. */
export class QgaGuest {
  readonly backend = 'qemu-guest-agent' as const;
  private constructor(readonly target: string, readonly qga: QgaCommands, readonly route: Route, private readonly guestInfo: GuestInfo, private readonly os: OsInfo, private readonly hostname: string) {}

  /** qemu-ga on its chardev socket. */
  static async connect(target: string, socketPath: string, timeoutMs: number, route?: Route): Promise<QgaGuest> {
    let qga: QgaClient;
    try {
      qga = await QgaClient.connect(socketPath, timeoutMs);
    } catch (err) {
      throw new UnreachableError(err as Error);
    }
    return QgaGuest.over(target, qga, route ?? { via: 'direct', detail: `directly to qemu-guest-agent on ${socketPath} (the broker daemon relays only Porthole's protocol)` });
  }

  /** qemu-ga however its commands reach it (a socket, libvirt). */
  static async over(target: string, qga: QgaCommands, route: Route): Promise<QgaGuest> {
    try {
      const info = await qga.command<GuestInfo>('guest-info');
      // Optional commands: an older qemu-ga (or --block-rpcs) may lack them; info then says less.
      const os = await qga.command<OsInfo>('guest-get-osinfo').catch(() => ({}));
      const host = await qga.command<{ 'host-name': string }>('guest-get-host-name').catch(() => ({ 'host-name': '' }));
      return new QgaGuest(target, qga, route, info, os, host['host-name']);
    } catch (err) {
      qga.close();
      throw qgaFailure(err);
    }
  }

  /** "qemu-guest-agent 7.2.19". */
  get agent(): string {
    return `qemu-guest-agent ${this.guestInfo.version}`;
  }

  enabled(command: string): boolean {
    return this.guestInfo.supported_commands.some((c) => c.name === command && c.enabled);
  }

  /** Commands this guest's owner switched off (qemu-ga --block-rpcs). */
  get disabledCommands(): string[] {
    return this.guestInfo.supported_commands.filter((c) => !c.enabled).map((c) => c.name);
  }

  /** A Porthole-shaped hello: capabilities are the qemu-ga commands that are enabled. */
  get hello(): v1.Hello {
    const caps: v1.Capability[] = [];
    if (this.enabled('guest-file-open') && this.enabled('guest-file-write')) caps.push(v1.Capability.CAPABILITY_FILE_WRITE);
    if (this.enabled('guest-file-open') && this.enabled('guest-file-read')) caps.push(v1.Capability.CAPABILITY_FILE_READ);
    if (this.enabled('guest-exec') && this.enabled('guest-exec-status')) caps.push(v1.Capability.CAPABILITY_EXEC);
    return v1.Hello.create({
      softwareVersion: this.agent, os: this.os['pretty-name'] ?? this.os.id ?? '', arch: this.os.machine ?? '',
      hostname: this.hostname, kernel: this.os['kernel-release'] ?? '', capabilities: caps,
    });
  }

  async info(): Promise<v1.InfoResult> {
    return v1.InfoResult.create({ hello: this.hello });
  }

  close(): void {
    this.qga.close();
  }

  /** Runs argv through guest-exec; a refusal becomes POLICY_DENIED. */
  async run(argv: string[], options: { env?: Record<string, string>; input?: Buffer; timeoutMs?: number } = {}) {
    try {
      return await this.qga.run(argv[0], argv.slice(1), { pollMs: 20, ...options });
    } catch (err) {
      throw qgaFailure(err);
    }
  }

  exec(command: ExecCommand, options: ExecOptions = {}): QgaExecTask {
    return new QgaExecTask(this, command, options);
  }

  /** Write a file with guest-file-*; then mode/owner and the sha256 check through guest-exec (sha256sum), or by reading it back. */
  installFile(source: InstallSource, options: InstallOptions): Task<InstallResult> {
    return new Task(options.requestId ?? randomUUID(), async (_signal, task) => {
      if (options.overwrite === 'append' || options.overwrite === 'fail-if-exists') {
        throw errors.unsupported(`overwrite: ${options.overwrite} is not possible through qemu-guest-agent`);
      }
      const data = await bufferOf(source);
      const path = Buffer.isBuffer(options.path) ? options.path.toString() : options.path;
      const sha256 = createHash('sha256').update(data).digest('hex');
      if (options.sha256 && options.sha256 !== sha256) throw new PortholeError(E.ERROR_CODE_CHECKSUM_MISMATCH, `the content's sha256 is ${sha256}, not ${options.sha256}`);
      const canExec = this.enabled('guest-exec');
      if (options.mkdir) await this.run(['/bin/mkdir', '-p', '--', posix.dirname(path)]);
      try {
        await this.qga.writeFile(path, data, this.qga.maxChunk, (bytes) => task.emit('progress', { bytes, total: data.length }));
      } catch (err) {
        throw qgaFailure(err);
      }
      const owner = options.owner !== undefined ? `${options.owner}${options.group !== undefined ? `:${options.group}` : ''}` : options.group !== undefined ? `:${options.group}` : '';
      const mode = options.mode !== undefined ? options.mode.toString(8) : '';
      if (!canExec) {
        if (owner || mode) throw qgaFailure(new QgaError('guest-exec', 'GenericError', 'The command guest-exec has been disabled for this instance (needed for owner and mode)'));
        const back = createHash('sha256').update(await this.qga.readFile(path, this.qga.maxChunk).catch((e: unknown) => { throw qgaFailure(e); })).digest('hex');
        if (back !== sha256) throw new PortholeError(E.ERROR_CODE_CHECKSUM_MISMATCH, `read back sha256 ${back}, sent ${sha256}`);
        return { path: Buffer.from(path), size: data.length, sha256, uid: 0, gid: 0, mode: 0, resumedFrom: 0 };
      }
      // One guest-exec for everything after the write: each costs a command and polls.
      const script = 'set -e; [ -z "$2" ] || chown -- "$2" "$1"; [ -z "$3" ] || chmod -- "$3" "$1"; stat -c "%u %g %a %s" -- "$1"; if command -v sha256sum >/dev/null; then sha256sum -- "$1"; fi';
      const r = await this.run(['/bin/sh', '-c', script, 'sh', path, owner, mode]);
      if (r.code !== 0) throw new PortholeError(E.ERROR_CODE_INTERNAL, `setting owner/mode of ${path} failed: ${r.stderr.toString().trim()}`);
      const [statLine, sumLine] = r.stdout.toString().split('\n');
      const [uid, gid, octal] = statLine.split(' ');
      const guestSum = sumLine?.split(' ')[0] || createHash('sha256').update(await this.qga.readFile(path, this.qga.maxChunk)).digest('hex');
      if (guestSum !== sha256) throw new PortholeError(E.ERROR_CODE_CHECKSUM_MISMATCH, `the guest reports sha256 ${guestSum}, sent ${sha256}`);
      return { path: Buffer.from(path), size: data.length, sha256, uid: Number(uid), gid: Number(gid), mode: parseInt(octal, 8), resumedFrom: 0 };
    });
  }

  /** Read a guest file with guest-file-read; checked against the guest's sha256sum when guest-exec is allowed and it has one. */
  readFile(path: string | Buffer, range: { offset?: number; length?: number } = {}): Task<ReadResult> & { data: Readable } {
    const data = new PassThrough();
    const task = new Task<ReadResult>(randomUUID(), async (_signal, t) => {
      if (range.offset || range.length) throw errors.unsupported('ranged reads are not possible through qemu-guest-agent');
      const p = Buffer.isBuffer(path) ? path.toString() : path;
      try {
        const content = await this.qga.readFile(p, this.qga.maxChunk, (bytes) => t.emit('progress', { bytes }));
        const sha256 = createHash('sha256').update(content).digest('hex');
        if (this.enabled('guest-exec')) {
          const r = await this.run(['/bin/sh', '-c', 'if command -v sha256sum >/dev/null; then sha256sum -- "$1"; fi', 'sh', p]);
          const guestSum = r.stdout.toString().split(' ')[0];
          if (guestSum && guestSum !== sha256) throw new PortholeError(E.ERROR_CODE_CHECKSUM_MISMATCH, `read-back sha256 ${sha256} differs from the guest's ${guestSum}`);
        }
        data.end(content);
        return { header: v1.FileReadHeader.create({ path: Buffer.from(p), size: content.length, length: content.length }), sha256, length: content.length };
      } catch (err) {
        const e = qgaFailure(err);
        if (data.listenerCount('error') > 0) data.destroy(e); else data.destroy();
        throw e;
      }
    });
    return Object.assign(task, { data });
  }
}

function signalName(n: number): string {
  return Object.entries(osConstants.signals).find(([, v]) => v === n)?.[0] ?? `signal ${n}`;
}

/** A command run through guest-exec: stdin is collected and passed whole, output comes at the exit. */
export class QgaExecTask extends EventEmitter {
  readonly stdout = new PassThrough();
  readonly stderr = new PassThrough();
  readonly stdin: Writable;
  readonly exit: Promise<QgaExitStatus>;
  private cancelled?: string;

  constructor(guest: QgaGuest, command: ExecCommand, options: ExecOptions) {
    super();
    const input: Buffer[] = [];
    let stdinDone!: () => void;
    const stdinEnded = new Promise<void>((r) => { stdinDone = r; });
    this.stdin = new Writable({
      write: (chunk: Buffer, _enc, done) => { input.push(chunk); done(); },
      final: (done) => { stdinDone(); done(); },
    });
    if (!options.stdin) stdinDone();
    this.exit = (async () => {
      try {
        if (options.user !== undefined || options.group !== undefined || options.cwd || options.clearEnv) {
          throw errors.unsupported('user, group, cwd and a cleared environment are not possible through qemu-guest-agent (it runs commands as itself)');
        }
        if (!Array.isArray(command) && command.powershell) throw errors.unsupported('--powershell needs a Windows guest with Porthole\'s agent');
        const argv = Array.isArray(command) ? command : ['/bin/sh', '-c', command.shell];
        await stdinEnded;
        const started = Date.now();
        const r = await guest.run(argv, { env: options.env, input: options.stdin ? Buffer.concat(input) : undefined, timeoutMs: options.timeoutMs || undefined });
        if (this.cancelled) throw errors.cancelled(this.cancelled);
        this.stdout.end(r.stdout);
        this.stderr.end(r.stderr);
        return {
          code: r.code ?? null, signal: r.signal ? signalName(r.signal) : null, durationMs: Date.now() - started,
          timedOut: false, cancelled: false, streamed: false, outputTruncated: r.stdoutTruncated || r.stderrTruncated,
        };
      } catch (err) {
        this.stdout.end();
        this.stderr.end();
        throw PortholeError.from(err);
      }
    })();
    this.exit.catch(() => undefined);
  }

  /** qemu-ga has no signal or cancel for guest-exec: only the host side stops waiting. */
  cancel(reason = 'cancelled by the host'): void {
    this.cancelled = reason;
  }
}
