// What callers hand the builder: payloads made of entries (guest path + content
// + owner/group/mode), checked and normalized before anything is written.
import { statSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { Availability, checkGuestPath, MAX_PRINCIPAL_ID, PAYLOAD_ID_PATTERN, Principal, PRINCIPAL_NAME_PATTERN } from './manifest';

/** Guest path: a string (encoded as UTF-8) or its exact bytes. */
export type GuestPath = string | Uint8Array;

export type EntryContent =
  /** Standard base64, as management APIs send it (line breaks allowed). */
  | { base64: string }
  /** A file on the host. */
  | { localFile: string }
  | { data: Uint8Array };

export interface PayloadEntry {
  guestPath: GuestPath;
  content: EntryContent;
  /** User name or numeric uid; absent = the agent's default. */
  owner?: string | number | null;
  group?: string | number | null;
  /** Permission bits as a number (0o640) or an octal string ("0640"); absent = the agent's default. */
  mode?: number | string | null;
}

export interface PayloadSpec {
  /** Safe-alphabet id ([A-Za-z0-9._:-], up to 128); absent = derived from the content. */
  id?: string;
  /** Default "permanent". */
  availability?: Availability;
  entries: PayloadEntry[];
  /** Run in order after all files are in place; each is an argv. */
  commands?: string[][];
}

export class PayloadSpecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PayloadSpecError';
  }
}

/** A checked entry: content is either bytes in memory or a regular host file of known size. */
export interface NormalizedEntry {
  path: Buffer;
  source: { data: Buffer } | { localFile: string };
  size: number;
  owner: Principal | null;
  group: Principal | null;
  mode: number | null;
}

export interface NormalizedPayload {
  id?: string;
  availability: Availability;
  entries: NormalizedEntry[];
  commands: string[][];
}

function describePath(p: Buffer): string {
  return JSON.stringify(p.toString('utf8'));
}

/** Decodes standard base64, ignoring whitespace; anything else is refused rather than skipped. */
export function decodeBase64Strict(text: string, what: string): Buffer {
  const compact = text.replace(/\s+/g, '');
  const data = Buffer.from(compact, 'base64');
  if (data.toString('base64') !== compact) throw new PayloadSpecError(`${what} is not valid base64`);
  return data;
}

export function parsePrincipal(v: string | number | null | undefined, what: string): Principal | null {
  if (v === undefined || v === null || v === '') return null;
  if (typeof v === 'number' || /^[0-9]+$/.test(v)) {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0 || n > MAX_PRINCIPAL_ID) throw new PayloadSpecError(`${what}: numeric id out of range: ${v}`);
    return { numeric: n };
  }
  if (!PRINCIPAL_NAME_PATTERN.test(v)) throw new PayloadSpecError(`${what}: not a valid name: ${JSON.stringify(v)}`);
  return { name: v };
}

export function parseMode(v: number | string | null | undefined, what: string): number | null {
  if (v === undefined || v === null || v === '') return null;
  const n = typeof v === 'number' ? v : /^0?[0-7]{1,4}$/.test(v) ? parseInt(v, 8) : NaN;
  if (!Number.isInteger(n) || n < 0 || n > 0o7777) throw new PayloadSpecError(`${what}: mode must be octal 0..7777, got ${JSON.stringify(v)}`);
  return n;
}

/** An entry's content, checked: bytes in memory, or a regular host file and its size now. */
export function normalizeContent(content: EntryContent, what: string): Pick<NormalizedEntry, 'source' | 'size'> {
  if ('base64' in content) {
    const data = decodeBase64Strict(content.base64, `content of ${what}`);
    return { source: { data }, size: data.length };
  }
  if ('data' in content) return { source: { data: Buffer.from(content.data) }, size: content.data.length };
  const file = content.localFile;
  let st;
  try {
    st = statSync(file);
  } catch (err) {
    throw new PayloadSpecError(`${what}: cannot read local file ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  if (!st.isFile()) throw new PayloadSpecError(`${what}: local file ${file} is not a regular file`);
  return { source: { localFile: file }, size: st.size };
}

function normalizeEntry(e: PayloadEntry, where: string): NormalizedEntry {
  const path = typeof e.guestPath === 'string' ? Buffer.from(e.guestPath, 'utf8') : Buffer.from(e.guestPath);
  const problem = checkGuestPath(path);
  if (problem) throw new PayloadSpecError(`${where}: guest path ${describePath(path)}: ${problem}`);
  const what = `${where} (${describePath(path)})`;
  return {
    path,
    ...normalizeContent(e.content, what),
    owner: parsePrincipal(e.owner, `${what} owner`),
    group: parsePrincipal(e.group, `${what} group`),
    mode: parseMode(e.mode, what),
  };
}

/** Checks payloads before any file is written: paths, ids, availability, commands, sources. */
export function normalizePayloads(specs: PayloadSpec[]): NormalizedPayload[] {
  if (specs.length === 0) throw new PayloadSpecError('no payloads given');
  const ids = new Set<string>();
  return specs.map((spec, pi) => {
    const where = `payload ${spec.id ?? pi + 1}`;
    if (spec.id !== undefined) {
      if (!PAYLOAD_ID_PATTERN.test(spec.id)) throw new PayloadSpecError(`${where}: id must match ${PAYLOAD_ID_PATTERN.source}`);
      if (ids.has(spec.id)) throw new PayloadSpecError(`${where}: id used twice`);
      ids.add(spec.id);
    }
    const availability = spec.availability ?? 'permanent';
    if (availability !== 'permanent' && availability !== 'run-once') {
      throw new PayloadSpecError(`${where}: availability must be "permanent" or "run-once", got ${JSON.stringify(availability)}`);
    }
    if (!Array.isArray(spec.entries)) throw new PayloadSpecError(`${where}: entries must be an array`);
    const entries = spec.entries.map((e, i) => normalizeEntry(e, `${where} entry ${i + 1}`));
    const seen = new Set<string>();
    for (const e of entries) {
      if (seen.has(e.path.toString('hex'))) throw new PayloadSpecError(`${where}: guest path ${describePath(e.path)} given twice`);
      seen.add(e.path.toString('hex'));
    }
    const commands = (spec.commands ?? []).map((argv, ci) => {
      if (!Array.isArray(argv) || argv.length === 0 || argv.some((a) => typeof a !== 'string' || a.includes('\0')) || argv[0] === '') {
        throw new PayloadSpecError(`${where} command ${ci + 1}: must be a non-empty argv of strings without NUL`);
      }
      return [...argv];
    });
    if (entries.length === 0 && commands.length === 0) throw new PayloadSpecError(`${where}: has neither files nor commands`);
    return { id: spec.id, availability, entries, commands };
  });
}

// ---------------------------------------------------------------- JSON spec file

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function onlyKeys(o: Obj, keys: string[], where: string): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) throw new PayloadSpecError(`${where}: unknown key ${JSON.stringify(k)}`);
}

function principalValue(v: unknown, where: string): string | number | null {
  if (v === undefined || v === null || typeof v === 'string' || typeof v === 'number') return v ?? null;
  throw new PayloadSpecError(`${where}: must be a name or a numeric id`);
}

function specEntry(v: unknown, where: string, baseDir: string): PayloadEntry {
  if (!isObj(v)) throw new PayloadSpecError(`${where}: must be an object`);
  onlyKeys(v, ['path', 'pathB64', 'contentB64', 'localFile', 'owner', 'group', 'mode'], where);
  if ((v.path === undefined) === (v.pathB64 === undefined)) throw new PayloadSpecError(`${where}: give exactly one of "path" and "pathB64"`);
  if ((v.contentB64 === undefined) === (v.localFile === undefined)) throw new PayloadSpecError(`${where}: give exactly one of "contentB64" and "localFile"`);
  const str = (x: unknown, key: string): string => {
    if (typeof x !== 'string') throw new PayloadSpecError(`${where}: "${key}" must be a string`);
    return x;
  };
  const guestPath = v.path !== undefined ? str(v.path, 'path') : decodeBase64Strict(str(v.pathB64, 'pathB64'), `${where} pathB64`);
  const content: EntryContent =
    v.contentB64 !== undefined ? { base64: str(v.contentB64, 'contentB64') } : { localFile: resolve(baseDir, str(v.localFile, 'localFile')) };
  if (v.mode !== undefined && v.mode !== null && typeof v.mode !== 'string' && typeof v.mode !== 'number') {
    throw new PayloadSpecError(`${where}: "mode" must be an octal string or a number`);
  }
  return {
    guestPath,
    content,
    owner: principalValue(v.owner, `${where} owner`),
    group: principalValue(v.group, `${where} group`),
    mode: v.mode as string | number | null | undefined,
  };
}

function specPayload(v: unknown, where: string, baseDir: string): PayloadSpec {
  if (!isObj(v)) throw new PayloadSpecError(`${where}: must be an object`);
  onlyKeys(v, ['id', 'availability', 'files', 'commands'], where);
  if (v.id !== undefined && typeof v.id !== 'string') throw new PayloadSpecError(`${where}: "id" must be a string`);
  if (!Array.isArray(v.files ?? [])) throw new PayloadSpecError(`${where}: "files" must be an array`);
  if (v.commands !== undefined && !Array.isArray(v.commands)) throw new PayloadSpecError(`${where}: "commands" must be an array of argv arrays`);
  return {
    id: v.id,
    availability: v.availability as Availability | undefined,
    entries: ((v.files ?? []) as unknown[]).map((f, i) => specEntry(f, `${where} file ${i + 1}`, baseDir)),
    commands: v.commands as string[][] | undefined,
  };
}

/**
 * Reads a build spec (FORMAT.md, "Build spec"): `{"payloads": [...]}`, a list
 * of payloads, or one payload. Relative local files are taken from baseDir.
 * The result still goes through normalizePayloads when it is built.
 */
export function parsePayloadSpec(text: string, baseDir: string): PayloadSpec[] {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new PayloadSpecError(`payload spec is not JSON: ${(e as Error).message}`);
  }
  if (!isAbsolute(baseDir)) baseDir = resolve(baseDir);
  let list: unknown;
  if (Array.isArray(raw)) list = raw;
  else if (isObj(raw) && 'payloads' in raw) {
    onlyKeys(raw, ['payloads'], 'payload spec');
    list = raw.payloads;
  } else list = [raw];
  if (!Array.isArray(list)) throw new PayloadSpecError('payload spec: "payloads" must be an array');
  return list.map((p, i) => specPayload(p, `spec payload ${i + 1}`, baseDir));
}
