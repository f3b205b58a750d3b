import { gunzipSync } from 'node:zlib';
import { parse as parseYaml } from 'yaml';

/** One file to inject, decoded from a manifest. */
export interface ManifestFile {
  path: string;
  content: Buffer;
  owner?: string;
  group?: string;
  mode?: number;
  append: boolean;
}

function decode(content: unknown, encoding: unknown, where: string): Buffer {
  // YAML's !!binary (cloud-init's usual form for gzip content) arrives as bytes already.
  const bytes = content instanceof Uint8Array ? Buffer.from(content) : undefined;
  const text = bytes ? bytes.toString('latin1') : content === undefined || content === null ? '' : String(content);
  const enc = String(encoding ?? 'text/plain').toLowerCase();
  switch (enc) {
    case 'text/plain':
    case 'text':
      return bytes ?? Buffer.from(text, 'utf8');
    case 'b64':
    case 'base64':
      return strictBase64(text, where);
    case 'gz':
    case 'gzip':
      return gunzip(bytes ?? Buffer.from(text, 'latin1'), where);
    case 'gz+b64':
    case 'gzip+base64':
    case 'gz+base64':
    case 'gzip+b64':
      return gunzip(strictBase64(text, where), where);
    default:
      throw new Error(`${where}: unknown encoding ${JSON.stringify(encoding)} (use b64, gzip, gz+b64 or text/plain)`);
  }
}

function gunzip(data: Buffer, where: string): Buffer {
  try {
    return gunzipSync(data);
  } catch (err) {
    throw new Error(`${where}: content is not gzip data (${(err as Error).message})`);
  }
}

function strictBase64(text: string, where: string): Buffer {
  const clean = text.replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(clean) || clean.length % 4 === 1) throw new Error(`${where}: content is not valid base64`);
  return Buffer.from(clean, 'base64');
}

function parseMode(v: unknown, where: string): number | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  // cloud-init takes an octal string ("0644"); YAML may already have read 0644 as a number.
  const text = typeof v === 'number' ? v.toString(8) : String(v);
  if (!/^0?[0-7]{3,4}$/.test(text)) throw new Error(`${where}: permissions must be octal like "0644", got ${JSON.stringify(v)}`);
  return parseInt(text, 8);
}

/**
 * Either cloud-init's `write_files` (a YAML/JSON document with a write_files
 * list, or the list itself) or the plain form: an object mapping guest paths to
 * base64 content.
 */
export function parseManifest(text: string): ManifestFile[] {
  let doc: unknown;
  try {
    // YAML 1.1, as cloud-init reads it (PyYAML): 0644 is octal, yes/no are booleans. YAML is a superset of JSON.
    doc = parseYaml(text, { version: '1.1' });
  } catch (err) {
    throw new Error(`manifest is neither YAML nor JSON: ${(err as Error).message}`);
  }
  const list = Array.isArray(doc) ? doc : (doc as { write_files?: unknown })?.write_files;
  if (Array.isArray(list)) {
    return list.map((entry, i) => {
      const where = `write_files[${i}]`;
      if (typeof entry !== 'object' || entry === null) throw new Error(`${where}: expected a mapping`);
      const e = entry as Record<string, unknown>;
      if (typeof e.path !== 'string' || !e.path.startsWith('/')) throw new Error(`${where}: path must be an absolute path`);
      const [owner, group] = typeof e.owner === 'string' ? e.owner.split(':') : [undefined, undefined];
      return {
        path: e.path,
        content: decode(e.content, e.encoding, `${where} (${e.path})`),
        owner: owner || undefined,
        group: group || undefined,
        mode: parseMode(e.permissions, `${where} (${e.path})`),
        append: e.append === true || e.append === 'true',
      };
    });
  }
  if (doc && typeof doc === 'object') {
    return Object.entries(doc as Record<string, unknown>).map(([path, content]) => {
      if (!path.startsWith('/')) throw new Error(`${path}: paths must be absolute`);
      if (typeof content !== 'string') throw new Error(`${path}: expected base64 content`);
      return { path, content: strictBase64(content, path), append: false };
    });
  }
  throw new Error('manifest must be a cloud-init write_files list or an object of path → base64 content');
}
