// Manifests for `porthole inject`: cloud-init's write_files, read the way
// cloud-init reads it (cloudinit/config/cc_write_files.py and its schema in
// schema-cloud-config-v1.json), or the plain form {"/path": "base64"}.
// Everything is checked here, before anything is written.
import { posix } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { parseDocument, type ParseOptions, type SchemaOptions } from 'yaml';

/** One file to inject. */
export interface ManifestFile {
  /** Its position in write_files (or in the plain form). */
  index: number;
  /** "write_files[1] (/etc/app.conf)": how messages name the entry. */
  where: string;
  /** Absolute and normalised, as cloud-init's os.path.abspath makes it. */
  path: string;
  /** The decoded inline content ('' without one); replaced by what `source` fetches. */
  content: Buffer;
  /** Whether `content` was given (cloud-init falls back to it when the source cannot be read). */
  hasContent: boolean;
  source?: { uri: string; headers: Record<string, string> };
  owner?: string;
  group?: string;
  /** No group given: the file keeps its group (root's for a new file), as cloud-init's chown(user, -1) does. */
  keepGroup: boolean;
  mode?: number;
  append: boolean;
  defer: boolean;
}

export interface Manifest {
  form: 'write_files' | 'plain';
  files: ManifestFile[];
  /** What cloud-init would accept too but deserves a word (string booleans, defer, ignored modules). */
  warnings: string[];
}

/** A manifest that cannot be applied as written; nothing has been written. */
export class ManifestError extends Error {}

/** cloud-init's write_files keys (the schema's additionalProperties is false). */
const ENTRY_KEYS = ['path', 'content', 'source', 'owner', 'permissions', 'encoding', 'append', 'defer'];
const SOURCE_KEYS = ['uri', 'headers'];
/** cloud-init's util.TRUE_STRINGS / FALSE_STRINGS (how it reads append and defer given as text). */
const TRUE_STRINGS = ['true', '1', 'on', 'yes'];
const FALSE_STRINGS = ['off', '0', 'no', 'false'];
/** cloud-init's default_owner on Linux distributions. */
const DEFAULT_OWNER = 'root:root';
const DEFAULT_MODE = 0o644;

/**
 * YAML 1.1 as PyYAML reads it: the yaml package's 1.1 schema also takes y/Y/n/N
 * as booleans, PyYAML keeps them strings (and cloud-init then reads "y" as false).
 */
const pyyamlBooleans: SchemaOptions['customTags'] = (tags) =>
  tags.map((tag) => {
    if (typeof tag !== 'object' || tag.tag !== 'tag:yaml.org,2002:bool' || !('test' in tag) || !tag.test) return tag;
    const truthy = tag.test.test('yes');
    return { ...tag, test: truthy ? /^(?:yes|Yes|YES|true|True|TRUE|on|On|ON)$/ : /^(?:no|No|NO|false|False|FALSE|off|Off|OFF)$/ };
  });

const show = (v: unknown) => JSON.stringify(v instanceof Uint8Array ? '<binary>' : v);

/**
 * base64 as Python's b64decode reads it (cloud-init does not validate): other
 * characters are dropped — with a warning here, blanks silently — and the
 * padding must be right.
 */
function base64(text: string, where: string, warnings: string[]): Buffer {
  const clean = text.replace(/[^A-Za-z0-9+/=]/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(clean) || clean.length % 4 !== 0) throw new ManifestError(`${where}: content is not valid base64`);
  const dropped = text.replace(/[A-Za-z0-9+/=\s]/g, '');
  if (dropped) warnings.push(`${where}: ${dropped.length} characters of the content are not base64 (${show(dropped.slice(0, 12))}); dropped, as cloud-init's decoding drops them`);
  return Buffer.from(clean, 'base64');
}

function gunzip(data: Buffer, where: string): Buffer {
  try {
    return gunzipSync(data);
  } catch (err) {
    throw new ManifestError(`${where}: content is not gzip data (${(err as Error).message})`);
  }
}

/** cloud-init's encodings (canonicalize_extraction: case and surrounding blanks do not matter). */
function decode(content: unknown, encoding: unknown, where: string, warnings: string[]): Buffer {
  // YAML's !!binary (cloud-init's usual form for gzip content) arrives as bytes already.
  const bytes = content instanceof Uint8Array ? Buffer.from(content) : undefined;
  if (!bytes && typeof content !== 'string') throw new ManifestError(`${where}: content must be a string, got ${show(content)} (quote it)`);
  const text = bytes ? bytes.toString('latin1') : (content as string);
  if (encoding !== undefined && encoding !== null && typeof encoding !== 'string') throw new ManifestError(`${where}: encoding must be a string`);
  switch ((encoding ?? '').trim().toLowerCase()) {
    case '':
    case 'text/plain':
      return bytes ?? Buffer.from(text, 'utf8');
    case 'b64':
    case 'base64':
      return base64(text, where, warnings);
    case 'gz':
    case 'gzip':
      return gunzip(bytes ?? Buffer.from(text, 'latin1'), where);
    case 'gz+b64':
    case 'gzip+base64':
    case 'gz+base64':
    case 'gzip+b64':
      return gunzip(base64(text, where, warnings), where);
    default:
      throw new ManifestError(`${where}: unknown encoding ${show(encoding)} (cloud-init's are b64, base64, gz, gzip, gz+b64, gzip+b64, gz+base64, gzip+base64, text/plain)`);
  }
}

/**
 * permissions: an octal string ("0644", "644" and "0o644" all mean 0644 to
 * cloud-init's int(value, 8)). An unquoted YAML number is taken only when it was
 * written in octal (0644): cloud-init would apply the decimal 644 as mode 01204.
 */
function parseMode(v: unknown, literal: string | undefined, where: string): number {
  if (v === undefined || v === null) return DEFAULT_MODE;
  let mode = NaN;
  if (typeof v === 'string') {
    const m = /^\s*(?:0[oO])?([0-7]+)\s*$/.exec(v);
    if (m) mode = parseInt(m[1], 8);
  } else if (typeof v === 'number' && Number.isInteger(v)) {
    if (literal !== undefined && /^0[oO]?[0-7]+$/.test(literal.trim())) mode = v;
    else {
      throw new ManifestError(`${where}: permissions ${literal?.trim() ?? v} is the decimal number ${v} to YAML (cloud-init would apply mode 0${v.toString(8)}); ` +
        "write the mode as an octal string like '0644'");
    }
  }
  if (!(mode >= 0 && mode <= 0o7777)) throw new ManifestError(`${where}: permissions must be an octal string like '0644', got ${show(v)}`);
  return mode;
}

/** append and defer: booleans in the schema; cloud-init's translate_bool also reads a few strings, with a warning here. */
function parseFlag(entry: Record<string, unknown>, key: 'append' | 'defer', where: string, warnings: string[]): boolean {
  const v = entry[key];
  if (v === undefined || v === null || typeof v === 'boolean') return v === true;
  const text = String(v).trim().toLowerCase();
  if ((typeof v === 'string' || typeof v === 'number') && (TRUE_STRINGS.includes(text) || FALSE_STRINGS.includes(text))) {
    const value = TRUE_STRINGS.includes(text);
    warnings.push(`${where}: ${key}: ${show(v)} is not a boolean (cloud-init's schema wants true or false); read as ${value}, as cloud-init reads it`);
    return value;
  }
  throw new ManifestError(`${where}: ${key} must be true or false, got ${show(v)}`);
}

/** cloud-init's util.extract_usergroup: "user:group", "user", and "", "-1" or "none" for "leave it as it is". */
function parseOwner(v: unknown, where: string): { owner?: string; group?: string } {
  if (typeof v !== 'string') throw new ManifestError(`${where}: owner must be a string like "user:group" or "user", got ${show(v)}`);
  const colon = v.indexOf(':');
  const keep = (s: string | undefined) => (s === undefined || s === '' || s === '-1' || s.toLowerCase() === 'none' ? undefined : s);
  return { owner: keep((colon < 0 ? v : v.slice(0, colon)).trim()), group: keep(colon < 0 ? undefined : v.slice(colon + 1).trim()) };
}

function parseSource(v: unknown, where: string): { uri: string; headers: Record<string, string> } {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ManifestError(`${where}: source must be a mapping with uri (and headers)`);
  const s = v as Record<string, unknown>;
  for (const key of Object.keys(s)) {
    if (!SOURCE_KEYS.includes(key)) throw new ManifestError(`${where}: unknown key source.${key} (source takes uri and headers)`);
  }
  if (typeof s.uri !== 'string' || s.uri.trim() === '') throw new ManifestError(`${where}: source.uri must be a URL`);
  const uri = s.uri.trim();
  let scheme: string;
  try {
    scheme = new URL(uri).protocol;
  } catch {
    scheme = uri.startsWith('/') ? 'file:' : '';
  }
  if (scheme === 'file:') {
    throw new ManifestError(`${where}: source.uri ${uri} names a file inside the guest (cloud-init reads it there); porthole inject fetches http and https on the host — give the content instead`);
  }
  if (scheme !== 'http:' && scheme !== 'https:') throw new ManifestError(`${where}: source.uri ${show(uri)}: porthole inject fetches only http and https URLs`);
  const headers: Record<string, string> = {};
  if (s.headers !== undefined && s.headers !== null) {
    if (typeof s.headers !== 'object' || Array.isArray(s.headers)) throw new ManifestError(`${where}: source.headers must be a mapping of header names to strings`);
    for (const [name, value] of Object.entries(s.headers as Record<string, unknown>)) {
      if (typeof value !== 'string') throw new ManifestError(`${where}: source.headers.${name} must be a string (quote it)`);
      headers[name] = value;
    }
  }
  return { uri, headers };
}

/** An absolute path the way os.path.abspath leaves it: "." and ".." resolved, no trailing or doubled slashes. */
function absolutePath(v: unknown, where: string): string {
  if (typeof v !== 'string' || !v.startsWith('/')) throw new ManifestError(`${where}: path must be an absolute path, got ${show(v)}`);
  const path = posix.normalize(v).replace(/(.)\/+$/, '$1');
  if (path === '/') throw new ManifestError(`${where}: path ${show(v)} is the root directory, not a file`);
  return path;
}

function writeFilesEntry(entry: unknown, index: number, modeLiteral: string | undefined, warnings: string[]): ManifestFile {
  let where = `write_files[${index}]`;
  if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw new ManifestError(`${where}: expected a mapping`);
  const e = entry as Record<string, unknown>;
  const path = absolutePath(e.path, where);
  where = `${where} (${path})`;
  for (const key of Object.keys(e)) {
    if (!ENTRY_KEYS.includes(key)) throw new ManifestError(`${where}: unknown key ${show(key)} (write_files entries take ${ENTRY_KEYS.join(', ')})`);
  }
  const hasContent = e.content !== undefined && e.content !== null;
  const source = e.source === undefined || e.source === null ? undefined : parseSource(e.source, where);
  const { owner, group } = parseOwner(e.owner ?? DEFAULT_OWNER, where);
  const defer = parseFlag(e, 'defer', where, warnings);
  if (defer) {
    warnings.push(`${where}: defer: true has no meaning for a live injection — cloud-init holds such a file back until its final stage, ` +
      'after packages are installed and users created; this guest is already running, so the file is written now with the others');
  }
  return {
    index, where, path, hasContent, source, owner, group, keepGroup: group === undefined, defer,
    content: hasContent ? decode(e.content, e.encoding, where, warnings) : Buffer.alloc(0),
    mode: parseMode(e.permissions, modeLiteral, where),
    append: parseFlag(e, 'append', where, warnings),
  };
}

/**
 * Reads a manifest: cloud-init's write_files (a #cloud-config document, or the
 * list itself), or the plain form mapping absolute guest paths to base64
 * content. Throws ManifestError naming the entry and key at fault.
 */
export function parseManifest(text: string): Manifest {
  if (/^##\s*template:\s*jinja/i.test(text)) throw new ManifestError('this is a jinja template (## template: jinja): cloud-init renders it with instance data; porthole inject does not');
  if (/^(?:[\w-]+:[^\n]*\n)*content-type:\s*multipart\//i.test(text)) throw new ManifestError('this is MIME multi-part user-data: give porthole inject its #cloud-config part');
  // YAML 1.1 as cloud-init reads it (PyYAML): 0644 is octal, yes/no are booleans. YAML is a superset of JSON.
  const doc = parseDocument(text, { version: '1.1', customTags: pyyamlBooleans } as ParseOptions & SchemaOptions);
  if (doc.errors.length) throw new ManifestError(`manifest is neither YAML nor JSON: ${doc.errors[0].message}`);
  const value: unknown = doc.toJS();
  const mapping = typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  const warnings: string[] = [];
  if (Array.isArray(value) || (mapping && 'write_files' in mapping)) {
    const list = Array.isArray(value) ? value : mapping!.write_files;
    if (!Array.isArray(list) || list.length === 0) throw new ManifestError('write_files must be a non-empty list');
    const prefix = Array.isArray(value) ? [] : ['write_files'];
    const ignored = mapping ? Object.keys(mapping).filter((k) => k !== 'write_files') : [];
    if (ignored.length) warnings.push(`porthole inject applies write_files only; also in this document, not applied: ${ignored.join(', ')}`);
    const files = list.map((entry, i) => {
      const node = doc.getIn([...prefix, i, 'permissions'], true) as { source?: string } | undefined;
      return writeFilesEntry(entry, i, node?.source, warnings);
    });
    return { form: 'write_files', files, warnings };
  }
  if (/^#cloud-config/.test(text)) throw new ManifestError('this cloud-config has no write_files: nothing to inject');
  if (mapping && Object.keys(mapping).length > 0) {
    const files = Object.entries(mapping).map(([key, content], index): ManifestFile => {
      const path = absolutePath(key, JSON.stringify(key));
      if (typeof content !== 'string') throw new ManifestError(`${path}: expected base64 content`);
      return { index, where: path, path, content: base64(content, path, warnings), hasContent: true, keepGroup: false, append: false, defer: false };
    });
    return { form: 'plain', files, warnings };
  }
  throw new ManifestError('manifest must be cloud-init write_files (a #cloud-config document or the list) or an object of path → base64 content');
}
