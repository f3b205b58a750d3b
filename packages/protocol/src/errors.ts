import { v1 } from './messages';

const ERRNO_CODES: Record<string, v1.ErrorCode> = {
  ENOSPC: v1.ErrorCode.ERROR_CODE_DISK_FULL,
  EDQUOT: v1.ErrorCode.ERROR_CODE_DISK_FULL,
  EFBIG: v1.ErrorCode.ERROR_CODE_DISK_FULL,
  EACCES: v1.ErrorCode.ERROR_CODE_PERMISSION_DENIED,
  EPERM: v1.ErrorCode.ERROR_CODE_PERMISSION_DENIED,
  ENOENT: v1.ErrorCode.ERROR_CODE_NOT_FOUND,
  EROFS: v1.ErrorCode.ERROR_CODE_READ_ONLY_FS,
  EISDIR: v1.ErrorCode.ERROR_CODE_IS_A_DIRECTORY,
  ENOTDIR: v1.ErrorCode.ERROR_CODE_NOT_A_DIRECTORY,
  EEXIST: v1.ErrorCode.ERROR_CODE_ALREADY_EXISTS,
  ETIMEDOUT: v1.ErrorCode.ERROR_CODE_TIMEOUT,
  EINVAL: v1.ErrorCode.ERROR_CODE_INVALID_ARGUMENT,
  ENAMETOOLONG: v1.ErrorCode.ERROR_CODE_INVALID_ARGUMENT,
  ELOOP: v1.ErrorCode.ERROR_CODE_PERMISSION_DENIED,
  EMFILE: v1.ErrorCode.ERROR_CODE_RESOURCE_EXHAUSTED,
  ENFILE: v1.ErrorCode.ERROR_CODE_RESOURCE_EXHAUSTED,
  ENOMEM: v1.ErrorCode.ERROR_CODE_RESOURCE_EXHAUSTED,
  EAGAIN: v1.ErrorCode.ERROR_CODE_RESOURCE_EXHAUSTED,
};

/** "POLICY_DENIED" for v1.ErrorCode.ERROR_CODE_POLICY_DENIED. */
export function errorCodeName(code: v1.ErrorCode): string {
  const name = v1.ErrorCode[code] as string | undefined;
  return name ? name.replace(/^ERROR_CODE_/, '') : `ERROR_${code}`;
}

/** An error with a cause from the protocol's enum, as carried in Reset. */
export class PortholeError extends Error {
  readonly code: v1.ErrorCode;
  readonly rule?: string;
  readonly path?: Buffer;

  constructor(code: v1.ErrorCode, message: string, extra: { rule?: string; path?: Uint8Array; cause?: unknown } = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = 'PortholeError';
    this.code = code;
    if (extra.rule) this.rule = extra.rule;
    if (extra.path && extra.path.length) this.path = Buffer.from(extra.path);
  }

  get codeName(): string {
    return errorCodeName(this.code);
  }

  static fromProto(e: v1.Error.$Properties | null | undefined): PortholeError {
    if (!e) return new PortholeError(v1.ErrorCode.ERROR_CODE_INTERNAL, 'the peer reset the stream without a reason');
    return new PortholeError(typeof e.code === 'number' ? e.code : v1.ErrorCode.ERROR_CODE_INTERNAL, e.message || 'no message', {
      rule: e.rule ?? undefined,
      path: e.path ?? undefined,
    });
  }

  toProto(): v1.Error.$Properties {
    return { code: this.code, message: this.message, rule: this.rule ?? '', path: this.path ?? Buffer.alloc(0) };
  }

  /** Map anything thrown to a PortholeError, keeping the cause readable. */
  static from(err: unknown, context?: string): PortholeError {
    if (err instanceof PortholeError) return err;
    const prefix = context ? `${context}: ` : '';
    if (err instanceof Error) {
      const errno = (err as NodeJS.ErrnoException).code;
      const code = (errno ? ERRNO_CODES[errno] : undefined) ?? v1.ErrorCode.ERROR_CODE_INTERNAL;
      if (err.name === 'AbortError') return new PortholeError(v1.ErrorCode.ERROR_CODE_CANCELLED, prefix + err.message, { cause: err });
      return new PortholeError(code, prefix + err.message, { cause: err });
    }
    return new PortholeError(v1.ErrorCode.ERROR_CODE_INTERNAL, prefix + String(err));
  }
}

/** Shorthand constructors for the causes used most. */
export const errors = {
  sessionReset: (why: string) => new PortholeError(v1.ErrorCode.ERROR_CODE_SESSION_RESET, why),
  protocol: (why: string) => new PortholeError(v1.ErrorCode.ERROR_CODE_PROTOCOL, why),
  timeout: (why: string) => new PortholeError(v1.ErrorCode.ERROR_CODE_TIMEOUT, why),
  cancelled: (why: string) => new PortholeError(v1.ErrorCode.ERROR_CODE_CANCELLED, why),
  invalid: (why: string) => new PortholeError(v1.ErrorCode.ERROR_CODE_INVALID_ARGUMENT, why),
  unsupported: (why: string) => new PortholeError(v1.ErrorCode.ERROR_CODE_UNSUPPORTED, why),
};
