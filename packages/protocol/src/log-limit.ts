/** The logger shape the session writes to (winston's Logger fits it). */
export interface SessionLogger {
  debug(message: string, meta?: object): void;
  info(message: string, meta?: object): void;
  warn(message: string, meta?: object): void;
  error(message: string, meta?: object): void;
}

export interface RepeatLimit {
  /** Lines of one kind passed on per window (default 10). */
  burst?: number;
  /** Default 60 s. */
  windowMs?: number;
}

/** Kinds counted at once; past it, new kinds share one count (a flood must not grow this table). */
const MAX_KINDS = 256;
const OTHER = '\0other';

type Level = 'warn' | 'error';
interface Kind { level: Level; message: string; result?: unknown; rule?: unknown; passed: number; suppressed: number; timer?: NodeJS.Timeout }

/**
 * A logger that passes on at most `burst` warnings and errors of one kind per
 * window, then one line saying how many more there were: a peer that sends
 * garbage or failing requests by the thousand must not fill the journal. A
 * kind is the level, the message and the `result` and `rule` fields of a line
 * (so each refused rule still shows). debug and info lines pass unchanged.
 * flush() writes the counts held now (when the peer is gone).
 */
export class RepeatLimitedLogger implements SessionLogger {
  private readonly kinds = new Map<string, Kind>();
  private readonly burst: number;
  private readonly windowMs: number;

  constructor(private readonly logger: SessionLogger, limit: RepeatLimit = {}) {
    this.burst = limit.burst ?? 10;
    this.windowMs = limit.windowMs ?? 60_000;
  }

  debug(message: string, meta?: object): void {
    this.logger.debug(message, meta);
  }

  info(message: string, meta?: object): void {
    this.logger.info(message, meta);
  }

  warn(message: string, meta?: object): void {
    this.limited('warn', message, meta);
  }

  error(message: string, meta?: object): void {
    this.limited('error', message, meta);
  }

  /** Say how many lines of each kind were left out, and start counting afresh. */
  flush(): void {
    for (const [key, kind] of this.kinds) this.close(key, kind);
  }

  private limited(level: Level, message: string, meta?: object): void {
    const fields = (meta ?? {}) as { result?: unknown; rule?: unknown };
    let key = `${level}\0${message}\0${String(fields.result ?? '')}\0${String(fields.rule ?? '')}`;
    let kind = this.kinds.get(key);
    if (!kind && this.kinds.size >= MAX_KINDS) {
      key = OTHER;
      kind = this.kinds.get(key);
      message = 'other warnings';
    }
    if (!kind) {
      kind = { level, message, result: fields.result, rule: fields.rule, passed: 0, suppressed: 0 };
      this.kinds.set(key, kind);
      const counted = kind;
      kind.timer = setTimeout(() => this.close(key, counted), this.windowMs).unref();
    }
    if (kind.passed < this.burst && key !== OTHER) {
      kind.passed++;
      this.logger[level](message, meta);
    } else {
      kind.suppressed++;
    }
  }

  private close(key: string, kind: Kind): void {
    clearTimeout(kind.timer);
    this.kinds.delete(key);
    if (kind.suppressed === 0) return;
    const meta: Record<string, unknown> = { suppressed: kind.suppressed, windowSeconds: Math.round(this.windowMs / 1000) };
    if (kind.result !== undefined) meta.result = kind.result;
    if (kind.rule !== undefined) meta.rule = kind.rule;
    this.logger[kind.level](kind.message, meta);
  }
}
