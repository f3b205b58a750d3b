// The on-medium payload manifest: types, canonical hashing, serializer and a
// strict parser. Pure (no file system, no processes) so the guest agent can
// import it as `@porthole/media/manifest`. The format is specified in FORMAT.md.

export const MANIFEST_FORMAT = 'porthole-payload';
export const MANIFEST_SCHEMA_VERSION = 1;
/** Name of the manifest file in the medium's root directory. */
export const MANIFEST_FILE_NAME = 'porthole-payload.json';
/** Directory on the medium that holds the file contents under neutral names. */
export const MEDIUM_FILES_DIR = 'files';
/** Every Porthole payload medium's volume label starts with this. */
export const PAYLOAD_LABEL_PREFIX = 'PORTHOLE';
/** A manifest larger than this is refused before parsing. */
export const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;
export const MAX_GUEST_PATH_BYTES = 4096;

export type Availability = 'permanent' | 'run-once';
export type MediumKind = 'cd' | 'floppy';
/** A user or group by name or numeric id (the protocol's Principal). */
export type Principal = { name: string } | { numeric: number };

export interface ManifestFile {
  /** Guest path, exact bytes. */
  path: Buffer;
  /** Readable form of the path (UTF-8, invalid sequences as U+FFFD); for logs only. */
  pathText: string;
  /** File name on the medium relative to its root, e.g. "files/0001". */
  source: string;
  size: number;
  /** Lowercase hex sha256 of the content. */
  sha256: string;
  /** null = the agent's default (root on Unix). */
  owner: Principal | null;
  group: Principal | null;
  /** Permission bits (0..0o7777); null = the agent's default. */
  mode: number | null;
}

export interface ManifestCommand {
  argv: string[];
}

export interface ManifestPayload {
  id: string;
  availability: Availability;
  files: ManifestFile[];
  commands: ManifestCommand[];
  /** sha256 of this payload's canonical JSON (see FORMAT.md); changes when anything in it changes. */
  contentSha256: string;
}

export interface PayloadManifest {
  format: typeof MANIFEST_FORMAT;
  schemaVersion: number;
  medium: MediumKind;
  payloads: ManifestPayload[];
  manifestSha256: string;
}

/** Input of serializePayloadManifest: the manifest without its hashes. */
export interface ManifestInput {
  medium: MediumKind;
  payloads: Array<Omit<ManifestPayload, 'contentSha256'>>;
}

export class PayloadManifestError extends Error {
  constructor(
    message: string,
    /** Where in the manifest, e.g. "payloads[0].files[1].sha256"; empty for the whole text. */
    readonly field: string,
  ) {
    super(field ? `invalid payload manifest: ${field}: ${message}` : `invalid payload manifest: ${message}`);
    this.name = 'PayloadManifestError';
  }
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/**
 * RFC 8785 (JCS) canonical JSON for the values a manifest holds (strings, safe
 * integers, booleans, null, arrays, objects): keys sorted by UTF-16 code units,
 * no whitespace.
 */
export function canonicalJson(value: Json): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k])}`).join(',')}}`;
  }
  if (typeof value === 'number' && !Number.isSafeInteger(value)) throw new Error(`canonical JSON holds integers only, got ${value}`);
  return JSON.stringify(value);
}

function sha256Hex(text: string): string {
  // node:crypto loads here, not with the module: an idle agent imports this module but hashes nothing.
  const { createHash } = require('node:crypto') as typeof import('node:crypto');
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

const pathDecoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
/** The readable form of a guest path: what the manifest's `path` field must hold. */
export function readablePath(path: Uint8Array): string {
  return pathDecoder.decode(path);
}

/** A payload label has this prefix, compared case-insensitively (FAT tools may change case). */
export function isPayloadLabel(label: string): boolean {
  return label.trim().toUpperCase().startsWith(PAYLOAD_LABEL_PREFIX);
}

function principalJson(p: Principal | null): Json {
  if (p === null) return null;
  return 'name' in p ? p.name : p.numeric;
}

function modeJson(mode: number | null): Json {
  return mode === null ? null : mode.toString(8).padStart(4, '0');
}

function fileJson(f: ManifestFile): { [key: string]: Json } {
  return {
    pathB64: f.path.toString('base64'),
    path: readablePath(f.path),
    source: f.source,
    size: f.size,
    sha256: f.sha256,
    owner: principalJson(f.owner),
    group: principalJson(f.group),
    mode: modeJson(f.mode),
  };
}

function payloadJsonWithoutHash(p: Omit<ManifestPayload, 'contentSha256'>): { [key: string]: Json } {
  return {
    id: p.id,
    availability: p.availability,
    files: p.files.map(fileJson),
    commands: p.commands.map((c) => ({ argv: [...c.argv] })),
  };
}

/** The hash that identifies a payload's content (PayloadEvent.content_sha256). */
export function payloadContentSha256(p: Omit<ManifestPayload, 'contentSha256'>): string {
  return sha256Hex(canonicalJson(payloadJsonWithoutHash(p)));
}

/**
 * Serializes a manifest, computing each payload's contentSha256 and the
 * manifestSha256, then checks the result with the parser so the builder can
 * never write a manifest the agent would refuse.
 */
export function serializePayloadManifest(input: ManifestInput): { text: string; manifest: PayloadManifest } {
  const payloads = input.payloads.map((p) => {
    const body = payloadJsonWithoutHash(p);
    return { ...body, contentSha256: sha256Hex(canonicalJson(body)) };
  });
  const body: { [key: string]: Json } = {
    format: MANIFEST_FORMAT,
    schemaVersion: MANIFEST_SCHEMA_VERSION,
    medium: input.medium,
    payloads,
  };
  const text = `${JSON.stringify({ ...body, manifestSha256: sha256Hex(canonicalJson(body)) }, null, 2)}\n`;
  return { text, manifest: parsePayloadManifest(text) };
}

// ---------------------------------------------------------------- parser

const HEX64 = /^[0-9a-f]{64}$/;
/** Payload ids end up in the agent's state records: keep them to a safe alphabet. */
export const PAYLOAD_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const SOURCE_PATTERN = new RegExp(`^${MEDIUM_FILES_DIR}/[0-9]{4,6}$`);
const MODE_PATTERN = /^[0-7]{4}$/;
/** User and group names: no NUL, ':' or '/', no leading white space, up to 256 characters. */
export const PRINCIPAL_NAME_PATTERN = /^[^\0:/\s][^\0:/]{0,255}$/;
export const MAX_PRINCIPAL_ID = 0xffffffff;

type Obj = Record<string, unknown>;

function fail(field: string, message: string): never {
  throw new PayloadManifestError(message, field);
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? 'an object' : `${typeof v} ${JSON.stringify(v)}`.slice(0, 80);
}

function object(v: unknown, field: string, keys: readonly string[]): Obj {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) fail(field, `expected an object, got ${describe(v)}`);
  const o = v as Obj;
  for (const k of Object.keys(o)) if (!keys.includes(k)) fail(field, `unknown key ${JSON.stringify(k)}`);
  for (const k of keys) if (!(k in o)) fail(field, `missing key ${JSON.stringify(k)}`);
  return o;
}

function array(v: unknown, field: string, max: number): unknown[] {
  if (!Array.isArray(v)) fail(field, `expected an array, got ${describe(v)}`);
  if (v.length > max) fail(field, `more than ${max} entries`);
  return v;
}

function string(v: unknown, field: string): string {
  if (typeof v !== 'string') fail(field, `expected a string, got ${describe(v)}`);
  return v;
}

function hex64(v: unknown, field: string): string {
  const s = string(v, field);
  if (!HEX64.test(s)) fail(field, 'expected 64 lowercase hex digits');
  return s;
}

function principal(v: unknown, field: string): Principal | null {
  if (v === null) return null;
  if (typeof v === 'number') {
    if (!Number.isInteger(v) || v < 0 || v > MAX_PRINCIPAL_ID) fail(field, `numeric id must be an integer 0..${MAX_PRINCIPAL_ID}, got ${v}`);
    return { numeric: v };
  }
  if (typeof v === 'string') {
    if (!PRINCIPAL_NAME_PATTERN.test(v)) fail(field, `not a valid user or group name: ${JSON.stringify(v)}`);
    return { name: v };
  }
  return fail(field, `expected a name, a numeric id or null, got ${describe(v)}`);
}

/**
 * Checks a guest path's bytes: non-empty, no NUL, absolute (POSIX "/..." or a
 * Windows drive path "C:\..." / "C:/..."), not ending in a separator, and no
 * "." or ".." components.
 */
export function checkGuestPath(path: Uint8Array): string | undefined {
  if (path.length === 0) return 'empty path';
  if (path.length > MAX_GUEST_PATH_BYTES) return `path longer than ${MAX_GUEST_PATH_BYTES} bytes`;
  if (path.includes(0)) return 'path contains a NUL byte';
  const text = Buffer.from(path).toString('latin1');
  const windows = /^[A-Za-z]:[\\/]/.test(text);
  if (!windows && !text.startsWith('/')) return 'path is not absolute';
  const components = (windows ? text.slice(3) : text.slice(1)).split(windows ? /[\\/]/ : '/');
  if (components[components.length - 1] === '') return 'path names a directory (ends with a separator)';
  if (components.some((c) => c === '.' || c === '..')) return 'path contains a "." or ".." component';
  if (components.some((c) => c === '')) return 'path contains an empty component';
  return undefined;
}

function parseFile(v: unknown, field: string): ManifestFile {
  const o = object(v, field, ['pathB64', 'path', 'source', 'size', 'sha256', 'owner', 'group', 'mode']);
  const b64 = string(o.pathB64, `${field}.pathB64`);
  const path = Buffer.from(b64, 'base64');
  // Buffer.from skips bad characters; the round trip makes the check strict.
  if (path.toString('base64') !== b64) fail(`${field}.pathB64`, 'not canonical base64');
  const problem = checkGuestPath(path);
  if (problem) fail(`${field}.pathB64`, problem);
  const pathText = string(o.path, `${field}.path`);
  if (pathText !== readablePath(path)) fail(`${field}.path`, 'does not match pathB64 (must be its UTF-8 reading)');
  const source = string(o.source, `${field}.source`);
  if (!SOURCE_PATTERN.test(source)) fail(`${field}.source`, `expected "${MEDIUM_FILES_DIR}/" and 4 to 6 digits, got ${JSON.stringify(source)}`);
  const size = o.size;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) fail(`${field}.size`, `expected a non-negative integer, got ${describe(size)}`);
  let mode: number | null = null;
  if (o.mode !== null) {
    const m = string(o.mode, `${field}.mode`);
    if (!MODE_PATTERN.test(m)) fail(`${field}.mode`, `expected 4 octal digits such as "0644", got ${JSON.stringify(m)}`);
    mode = parseInt(m, 8);
  }
  return {
    path,
    pathText,
    source,
    size,
    sha256: hex64(o.sha256, `${field}.sha256`),
    owner: principal(o.owner, `${field}.owner`),
    group: principal(o.group, `${field}.group`),
    mode,
  };
}

function parseCommand(v: unknown, field: string): ManifestCommand {
  const o = object(v, field, ['argv']);
  const argv = array(o.argv, `${field}.argv`, 4096).map((a, i) => {
    const s = string(a, `${field}.argv[${i}]`);
    if (s.includes('\0')) fail(`${field}.argv[${i}]`, 'contains a NUL character');
    return s;
  });
  if (argv.length === 0 || argv[0] === '') fail(`${field}.argv`, 'needs a non-empty program name');
  return { argv };
}

function parsePayload(v: unknown, field: string, sources: Set<string>): ManifestPayload {
  const o = object(v, field, ['id', 'availability', 'files', 'commands', 'contentSha256']);
  const id = string(o.id, `${field}.id`);
  if (!PAYLOAD_ID_PATTERN.test(id)) fail(`${field}.id`, `expected ${PAYLOAD_ID_PATTERN.source}, got ${JSON.stringify(id).slice(0, 140)}`);
  const availability = o.availability;
  if (availability !== 'permanent' && availability !== 'run-once') fail(`${field}.availability`, `expected "permanent" or "run-once", got ${describe(availability)}`);
  const paths = new Set<string>();
  const files = array(o.files, `${field}.files`, 10000).map((f, i) => {
    const file = parseFile(f, `${field}.files[${i}]`);
    const key = file.path.toString('hex');
    if (paths.has(key)) fail(`${field}.files[${i}].pathB64`, `guest path ${JSON.stringify(file.pathText)} appears twice in this payload`);
    if (sources.has(file.source)) fail(`${field}.files[${i}].source`, `${file.source} is used by another file`);
    paths.add(key);
    sources.add(file.source);
    return file;
  });
  const commands = array(o.commands, `${field}.commands`, 1000).map((c, i) => parseCommand(c, `${field}.commands[${i}]`));
  const payload = { id, availability, files, commands } as const;
  const contentSha256 = hex64(o.contentSha256, `${field}.contentSha256`);
  const actual = payloadContentSha256(payload);
  if (actual !== contentSha256) fail(`${field}.contentSha256`, `hash mismatch: manifest says ${contentSha256}, content hashes to ${actual}`);
  return { ...payload, files, commands, contentSha256 };
}

/**
 * Parses and verifies a manifest's text: strict JSON shape (unknown or missing
 * keys are errors), schema version, every field's syntax, unique ids, paths and
 * source names, and both content hashes. Throws PayloadManifestError naming the
 * offending field. It does not read the files; the caller checks each file's
 * size and sha256 when it reads it.
 */
export function parsePayloadManifest(text: string): PayloadManifest {
  if (typeof text !== 'string') fail('', 'manifest text must be a string');
  if (Buffer.byteLength(text, 'utf8') > MAX_MANIFEST_BYTES) fail('', `larger than ${MAX_MANIFEST_BYTES} bytes`);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    fail('', `not JSON: ${(e as Error).message}`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) fail('', `expected a JSON object, got ${describe(raw)}`);
  const top = raw as Obj;
  if (top.format !== MANIFEST_FORMAT) fail('format', `expected ${JSON.stringify(MANIFEST_FORMAT)}, got ${describe(top.format)}`);
  if (top.schemaVersion !== MANIFEST_SCHEMA_VERSION) {
    fail('schemaVersion', `unsupported schema version ${describe(top.schemaVersion)} (this reader knows ${MANIFEST_SCHEMA_VERSION})`);
  }
  const o = object(raw, '', ['format', 'schemaVersion', 'medium', 'payloads', 'manifestSha256']);
  const medium = o.medium;
  if (medium !== 'cd' && medium !== 'floppy') fail('medium', `expected "cd" or "floppy", got ${describe(medium)}`);
  const manifestSha256 = hex64(o.manifestSha256, 'manifestSha256');
  // Checked before the fields so a tampered manifest is reported as such.
  const body = { ...o };
  delete body.manifestSha256;
  const actual = sha256Hex(canonicalJsonOf(body));
  if (actual !== manifestSha256) fail('manifestSha256', `hash mismatch: manifest says ${manifestSha256}, content hashes to ${actual}`);
  const sources = new Set<string>();
  const ids = new Set<string>();
  const payloads = array(o.payloads, 'payloads', 1000).map((p, i) => {
    const payload = parsePayload(p, `payloads[${i}]`, sources);
    if (ids.has(payload.id)) fail(`payloads[${i}].id`, `payload id ${payload.id} appears twice`);
    ids.add(payload.id);
    return payload;
  });
  if (payloads.length === 0) fail('payloads', 'no payloads');
  return { format: MANIFEST_FORMAT, schemaVersion: MANIFEST_SCHEMA_VERSION, medium, payloads, manifestSha256 };
}

/** canonicalJson of parsed JSON, reporting non-integer numbers as a manifest error. */
function canonicalJsonOf(value: unknown): string {
  try {
    return canonicalJson(value as Json);
  } catch (e) {
    return fail('', (e as Error).message);
  }
}
