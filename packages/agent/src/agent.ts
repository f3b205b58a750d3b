import * as os from 'node:os';
import { v1, PortholeError, RepeatLimitedLogger, Session, Stream, SLOW_PORT_STREAM_WINDOW, SERIAL_STREAM_WINDOW } from '@porthole/protocol';
import { Channel, Connector, connectWithRetry } from '@porthole/transport';
import { AgentConfig } from './config';
import { Policy } from './policy';
import { UserDb } from './users';
import { WindowsAccounts } from './windows/files';
import { shellArgv } from './shell';
import { AuditLogger } from './audit';
import { TransferStore, writeFileAtomic, transferStatus, chunksFromStream, readFileToStream, FileContext } from './files';
import { runExec } from './exec';
import { createSpawner, defaultSpawnHelperPath, NodeSpawner, Spawner } from './spawner';
import { showPath } from './paths';
import { AGENT_VERSION } from './version';
import { IdleTrimmer } from './idle-trim';

/** What one host holds on its connection, counted against the owner's [session] limits. */
interface HostHold {
  openFiles: number;
  /** Requests being served: once they settled after the host went away, what they left behind is swept. */
  requests: Set<Promise<void>>;
}

export interface AgentOptions {
  connector: Connector;
  config: AgentConfig;
  log: AuditLogger;
  /** Where /etc/passwd and /etc/group live (tests). */
  etcDir?: string;
  /** porthole-spawn, when not beside the agent (tests). */
  spawnHelper?: string;
}

/**
 * The guest agent: keeps a session open on its channel (reopening the channel
 * when it is lost) and serves each request stream with the handler for it.
 */
export class Agent {
  private policy: Policy;
  private readonly users: UserDb;
  private readonly transfers: TransferStore;
  private readonly running = { count: 0 };
  private readonly idle = new IdleTrimmer();
  /** Chosen at start: exec.spawn_helper and whether the helper is installed. */
  private readonly spawner: Spawner;
  private session?: Session;
  private stopped = false;
  /** Aborts a pending connect when the agent is stopped. */
  private readonly stopping = new AbortController();
  private readonly startedAt = Date.now();
  private sweepTimer?: NodeJS.Timeout;
  /** Failed and refused requests: a host can cause them by the thousand, so repeats are counted, not each logged. */
  private readonly failures: RepeatLimitedLogger;
  /** Listeners for sessions (the payload applier sends events through the current one). */
  readonly sessions = new Set<(s: Session) => void>();

  constructor(private readonly options: AgentOptions) {
    this.policy = new Policy(options.config);
    this.failures = new RepeatLimitedLogger(options.log);
    this.users = process.platform === 'win32' ? new WindowsAccounts() : new UserDb(options.etcDir);
    const t = options.config.transfers;
    this.transfers = new TransferStore(t.stateDir, t.abandonAfterSeconds * 1000, t.maxUnfinished || Infinity);
    // porthole-spawn is a Linux helper: Windows starts commands with Node's child_process, even beside a Linux build's helper.
    this.spawner = process.platform === 'win32'
      ? new NodeSpawner()
      : createSpawner(options.config.exec.spawnHelper, options.spawnHelper ?? defaultSpawnHelperPath(), options.log);
  }

  get log(): AuditLogger {
    return this.options.log;
  }

  get currentPolicy(): Policy {
    return this.policy;
  }

  get fileContext(): FileContext {
    return { policy: this.policy, users: this.users, transfers: this.transfers, log: this.options.log };
  }

  get currentSession(): Session | undefined {
    return this.session?.isReady ? this.session : undefined;
  }

  /** New policy (SIGHUP): applies to new requests and is announced with a new hello on the next session. */
  setConfig(config: AgentConfig): void {
    this.policy = new Policy(config);
  }

  async run(): Promise<void> {
    this.log.info('commands start through ' + this.spawner.description);
    this.sweepTransfers('at start');
    // Hourly, or sooner when the owner set a shorter age (but not more than once a minute).
    const every = Math.min(3600_000, Math.max(60_000, this.options.config.transfers.abandonAfterSeconds * 1000));
    this.sweepTimer = setInterval(() => this.sweepTransfers('periodically'), every);
    this.sweepTimer.unref();
    let quiet = false;
    while (!this.stopped) {
      let channel: Channel;
      try {
        channel = await connectWithRetry(this.options.connector, {
          maxDelayMs: 5000,
          signal: this.stopping.signal,
          onRetry: (err, attempt) => { if (attempt === 1 || attempt % 60 === 0) this.log.warn('channel not available, retrying', { error: err.message }); },
        });
      } catch (err) {
        if (this.stopped) return;
        throw err;
      }
      // A channel without a host (a virtio-serial port nobody opened) is dropped and opened again every
      // session.peer_timeout_seconds: said once, then only at debug level until a host answers.
      this.log.log(quiet ? 'debug' : 'info', 'channel open', { channel: channel.description });
      const hold: HostHold = { openFiles: 0, requests: new Set() };
      const session = this.openSession(channel, hold);
      const error = await new Promise<Error | undefined>((resolve) => session.once('close', resolve));
      void Promise.allSettled([...hold.requests]).then(() => {
        this.failures.flush();
        this.sweepTransfers('after the host went away');
      });
      const established = session.peerHello !== undefined;
      this.log.log(established || !quiet ? 'warn' : 'debug', established ? 'channel closed' : 'channel closed before a host said hello', {
        channel: channel.description, reason: error?.message,
      });
      quiet = !established;
      if (!this.stopped) await new Promise((r) => setTimeout(r, 200));
    }
  }

  stop(): void {
    this.stopped = true;
    this.stopping.abort(new Error('agent stopped'));
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.idle.stop();
    this.session?.close();
    this.spawner.close();
  }

  private sweepTransfers(when: string): void {
    const count = this.transfers.sweep();
    if (count) this.log.info('unfinished transfers removed', { count, when });
  }

  private openSession(channel: Channel, hold: HostHold): Session {
    const session = new Session(channel, {
      role: 'agent',
      hello: {
        softwareVersion: AGENT_VERSION,
        capabilities: this.policy.capabilities(),
        limits: this.policy.limits(),
        os: `${os.platform()}`,
        kernel: os.release(),
      },
      // A host that sends nothing and answers no ping is dropped: on a socket the next host is waiting.
      keepaliveIntervalMs: (this.policy.config.session.peerTimeoutSeconds * 1000) / 3,
      keepaliveTimeoutMs: this.policy.config.session.peerTimeoutSeconds * 1000,
      // Its ports are slow: a short window keeps a transfer from queueing requests behind it (a serial
      // line, which can corrupt bytes, is also the slowest).
      streamWindow: channel.reliable ? SLOW_PORT_STREAM_WINDOW : SERIAL_STREAM_WINDOW,
      onStream: (stream) => {
        const max = this.policy.config.session.maxStreams;
        if (max > 0 && session.openStreams > max) {
          const e = new PortholeError(v1.ErrorCode.ERROR_CODE_RESOURCE_EXHAUSTED,
            `${session.openStreams - 1} streams are open on this connection already, the most the guest's owner allows at once`, { rule: `session.max_streams = ${max}` });
          this.failures.warn('request refused', { request: stream.open.request, requestId: stream.open.requestId, result: e.codeName, error: e.message, rule: e.rule });
          stream.reset(e);
          return;
        }
        this.idle.begin();
        const served = this.serve(stream, hold);
        hold.requests.add(served);
        void served.finally(() => {
          hold.requests.delete(served);
          this.idle.end();
        });
      },
      logger: this.options.log,
    });
    session.on('ready', (hello: v1.Hello) => {
      this.log.info('session established', { broker: hello.softwareVersion, brokerHost: hello.hostname });
      this.idle.settle();
      for (const l of this.sessions) l(session);
    });
    session.on('reset', (err: PortholeError) => this.log.warn('session reset by the host', { reason: err.message }));
    this.session = session;
    return session;
  }

  /** Runs `use` as one of the files a host may hold open at once (session.max_open_files). */
  private async withOpenFile<T>(hold: HostHold, use: () => Promise<T>): Promise<T> {
    const max = this.policy.config.session.maxOpenFiles;
    if (max > 0 && hold.openFiles >= max) {
      throw new PortholeError(v1.ErrorCode.ERROR_CODE_RESOURCE_EXHAUSTED,
        `${hold.openFiles} files are open for this host already, the most the guest's owner allows at once`, { rule: `session.max_open_files = ${max}` });
    }
    hold.openFiles++;
    try {
      return await use();
    } finally {
      hold.openFiles--;
    }
  }

  private async serve(stream: Stream, hold: HostHold): Promise<void> {
    const open = stream.open;
    const started = Date.now();
    const audit: Record<string, unknown> = { request: open.request, requestId: open.requestId };
    try {
      switch (open.request) {
        case 'fileWrite':
          await this.withOpenFile(hold, () => this.handleWrite(stream, open.fileWrite as v1.FileWriteRequest, audit));
          break;
        case 'transferStatus': {
          const status = await transferStatus(this.fileContext, open.requestId);
          Object.assign(audit, { found: status.found, offset: status.offset });
          await stream.send({ transferStatus: status });
          break;
        }
        case 'fileRead': {
          const r = await this.withOpenFile(hold, () => readFileToStream(this.fileContext, open.fileRead!, stream));
          Object.assign(audit, { path: showPath(r.path), size: r.length, sha256: r.sha256 });
          break;
        }
        case 'exec': {
          const req = open.exec as v1.ExecRequest;
          const argv = req.shellCommand ? shellArgv(req.shellCommand, req.shell) : req.argv.map((a) => Buffer.from(a).toString('utf8'));
          // Values of the environment entries the host marked secret are hidden wherever they appear in argv.
          const secretValues = (req.secretEnv ?? []).map((name) => req.env?.[name]).filter((v): v is string => !!v);
          audit.argv = this.policy.redactArgv(argv, secretValues);
          if (req.user) audit.user = req.user.name ?? req.user.numeric;
          const exit = await runExec({ policy: this.policy, users: this.users, log: this.log, running: this.running, spawner: this.spawner }, req, stream);
          Object.assign(audit, { exitCode: exit.exited ? exit.code : undefined, signal: exit.signal || undefined, timedOut: exit.timedOut || undefined, cancelled: exit.cancelled || undefined });
          await stream.send({ execExit: exit });
          break;
        }
        case 'info':
          await stream.send({
            info: {
              hello: {
                softwareVersion: AGENT_VERSION, capabilities: this.policy.capabilities(), limits: this.policy.limits(),
                os: os.platform(), arch: os.arch(), hostname: os.hostname(), kernel: os.release(),
              },
              uptimeMs: Date.now() - this.startedAt,
              activeExecs: this.running.count,
            },
          });
          break;
        default:
          throw new PortholeError(v1.ErrorCode.ERROR_CODE_UNSUPPORTED, `this agent (${AGENT_VERSION}) does not support the request ${open.request ?? '(none)'}`);
      }
      // Whatever the host still sends (e.g. its end) is read so the stream can finish.
      stream.end();
      void (async () => { try { while ((await stream.readLent()) !== null); } catch { /* reset */ } })();
      this.log.info('request done', { ...audit, result: 'ok', durationMs: Date.now() - started });
    } catch (err) {
      const e = PortholeError.from(err);
      this.failures.warn('request failed', { ...audit, result: e.codeName, error: e.message, rule: e.rule, durationMs: Date.now() - started });
      stream.reset(e);
    }
  }

  private async handleWrite(stream: Stream, req: v1.FileWriteRequest, audit: Record<string, unknown>): Promise<void> {
    let endSha = '';
    audit.path = showPath(req.path);
    const { result, resumedFrom } = await writeFileAtomic(this.fileContext, stream.open.requestId, req, chunksFromStream(stream, (s) => { endSha = s; }), () => endSha);
    Object.assign(audit, { size: result.size, sha256: result.sha256, uid: result.uid, gid: result.gid, mode: `0${(result.mode ?? 0).toString(8)}` });
    if (resumedFrom > 0) audit.resumedFrom = resumedFrom;
    if (resumedFrom < 0) audit.repeated = true;
    await stream.send({ fileWriteResult: result });
  }
}
