// `porthole inject`: a parsed manifest applied to a guest as nearly all-or-nothing
// as the agent allows. Sources are fetched and every entry is checked against the
// limits the agent announced before the first file is written; a write that still
// fails stops the run, and the report says exactly which entries were applied.
import { setTimeout as sleep } from 'node:timers/promises';
import { v1, PortholeError } from '@porthole/protocol';
import type { InstallResult, PortholeClient } from './client';
import type { ManifestFile } from './manifest';
import { BROKER_VERSION } from './version';

const E = v1.ErrorCode;

export interface FetchOptions {
  /** Attempts after the first (cloud-init: 3). */
  retries?: number;
  /** Pause between attempts (cloud-init: 3 s). */
  retryDelayMs?: number;
  /** Per attempt. */
  timeoutMs?: number;
  /** Largest body taken (the content is held in memory until every entry is ready). */
  maxBytes?: number;
}

export const MAX_SOURCE_BYTES = 256 * 1024 * 1024;

/** A URL as messages show it: no user:password, no query (either may hold a token). */
export function showUrl(uri: string): string {
  try {
    const u = new URL(uri);
    return `${u.origin}${u.pathname}${u.search ? '?…' : ''}`;
  } catch {
    return '(not a URL)';
  }
}

/** Certificate and TLS failures are not retried (cloud-init does not retry its SSLError either). */
function isTlsError(err: unknown): boolean {
  const code = String((err as { cause?: { code?: unknown } })?.cause?.code ?? '');
  return /CERT|SSL|TLS|SIGNATURE|ALTNAME/.test(code);
}

function reason(err: unknown): string {
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  const text = cause?.message ? `${cause.code ? `${cause.code}: ` : ''}${cause.message}` : (err as Error).message;
  return text.replace(/\s+/g, ' ').trim();
}

async function fetchOnce(uri: string, headers: Record<string, string>, o: Required<FetchOptions>): Promise<Buffer> {
  const names = Object.keys(headers).map((h) => h.toLowerCase());
  const res = await fetch(uri, {
    headers: names.includes('user-agent') ? headers : { ...headers, 'User-Agent': `porthole/${BROKER_VERSION}` },
    redirect: 'follow',
    signal: AbortSignal.timeout(o.timeoutMs),
  });
  if (!res.ok) {
    await res.body?.cancel();
    throw new Error(`HTTP ${res.status}`);
  }
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of res.body ?? []) {
    size += (chunk as Uint8Array).length;
    if (size > o.maxBytes) throw new Error(`more than ${o.maxBytes} bytes`);
    parts.push(Buffer.from(chunk as Uint8Array));
  }
  return Buffer.concat(parts);
}

/**
 * Fetches every entry's source.uri (http or https, with its headers, following
 * redirects) the way cloud-init's read_url_or_decode does: an answer replaces
 * the inline content; when every attempt fails the entry falls back to its
 * content, with a warning. Without content to fall back to, the manifest is
 * refused: nothing is written over a file for want of data.
 */
export async function fetchSources(files: ManifestFile[], warnings: string[], options: FetchOptions = {}): Promise<void> {
  const o: Required<FetchOptions> = { retries: 3, retryDelayMs: 3000, timeoutMs: 30_000, maxBytes: MAX_SOURCE_BYTES, ...options };
  for (const f of files) {
    if (!f.source) continue;
    let failure = '';
    for (let attempt = 0; attempt <= o.retries; attempt++) {
      if (attempt > 0) await sleep(o.retryDelayMs);
      try {
        f.content = await fetchOnce(f.source.uri, f.source.headers, o);
        failure = '';
        break;
      } catch (err) {
        failure = reason(err);
        if (isTlsError(err)) break;
      }
    }
    if (!failure) continue;
    const tried = `cannot fetch source.uri ${showUrl(f.source.uri)} (${failure})`;
    if (!f.hasContent) {
      throw new PortholeError(E.ERROR_CODE_NOT_FOUND, `${f.where}: ${tried} and the entry has no content to fall back to; nothing was written`);
    }
    warnings.push(`${f.where}: ${tried}; using its content instead, as cloud-init does`);
  }
}

/** Component-wise prefix test on normalised paths, as the agent's policy does it. */
function within(path: Buffer, prefix: Buffer): boolean {
  if (prefix.length === 1 && prefix[0] === 0x2f) return true;
  return path.length >= prefix.length && path.subarray(0, prefix.length).equals(prefix) && (path.length === prefix.length || path[prefix.length] === 0x2f);
}

/**
 * The checks the agent's hello lets the host make before writing anything:
 * writes enabled, each path inside the allowed prefixes and outside the denied
 * ones, each size within the limit. The agent still checks every write (links,
 * users, the disk); these only keep a manifest that would be refused half-way
 * from being started.
 */
export function checkAgainstHello(files: ManifestFile[], hello: v1.Hello.$Properties | undefined): void {
  const denied = (f: ManifestFile, message: string, rule: string) =>
    new PortholeError(E.ERROR_CODE_POLICY_DENIED, `${f.where}: ${message}; nothing was written`, { rule, path: Buffer.from(f.path) });
  const l = hello?.limits;
  const text = (p: Uint8Array) => Buffer.from(p).toString();
  for (const f of files) {
    if (!hello?.capabilities?.includes(v1.Capability.CAPABILITY_FILE_WRITE)) throw denied(f, 'file write is disabled by the guest\'s owner', 'file_write.enabled = false');
    const path = Buffer.from(f.path);
    const deny = (l?.writeDenyPrefixes ?? []).find((p) => within(path, Buffer.from(p)));
    if (deny) throw denied(f, `writing ${f.path} is refused by the guest's owner`, `file_write.deny contains ${text(deny)}`);
    const allow = l?.writeAllowPrefixes ?? [];
    if (!allow.some((p) => within(path, Buffer.from(p)))) {
      throw denied(f, `writing ${f.path} is outside the prefixes the guest's owner allows`, `file_write.allow = [${allow.map(text).join(', ')}]`);
    }
    const max = Number(l?.maxFileSize ?? 0);
    if (max > 0 && f.content.length > max) throw denied(f, `${f.content.length} bytes is over the guest owner's limit of ${max} bytes`, `file_write.max_file_size = ${max}`);
  }
}

export interface AppliedFile {
  index: number;
  path: string;
  result: InstallResult;
}

export class InjectError extends PortholeError {
  constructor(cause: PortholeError, readonly applied: AppliedFile[], readonly failed: ManifestFile, readonly notApplied: ManifestFile[]) {
    super(cause.code, `${failed.where}: ${cause.message}`, { rule: cause.rule, path: cause.path });
  }
}

/**
 * Writes the entries in order (cloud-init's order: a later entry for the same
 * path sees the earlier one). The first failure stops the run with an
 * InjectError that lists what was applied, what failed and what was not tried;
 * the files written before it stay (the agent cannot undo a write).
 */
export async function applyManifest(client: PortholeClient, files: ManifestFile[], onApplied: (a: AppliedFile) => void = () => undefined): Promise<AppliedFile[]> {
  const applied: AppliedFile[] = [];
  for (const [i, f] of files.entries()) {
    try {
      const result = await client.installFile(f.content, {
        path: f.path, owner: f.owner, group: f.group, keepGroup: f.keepGroup, mode: f.mode, mkdir: true, overwrite: f.append ? 'append' : 'replace',
      }).result;
      const a = { index: f.index, path: f.path, result };
      applied.push(a);
      onApplied(a);
    } catch (err) {
      throw new InjectError(PortholeError.from(err), applied, f, files.slice(i + 1));
    }
  }
  return applied;
}
