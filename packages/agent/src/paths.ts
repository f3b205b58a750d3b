// Guest paths are bytes (non-UTF-8 names must survive), so they are handled as
// Buffers end to end and only turned into text for logs and messages. On Windows
// the same functions take Windows paths (windows/paths.ts).
import * as windows from './windows/paths';

const SLASH = 0x2f;
const WINDOWS = process.platform === 'win32';

/** Printable form for logs and errors: UTF-8 when valid, \xNN escapes otherwise. */
export function showPath(path: Uint8Array): string {
  const buf = Buffer.from(path);
  const text = buf.toString('utf8');
  if (Buffer.from(text, 'utf8').equals(buf)) return text;
  let out = '';
  for (const byte of buf) out += byte >= 0x20 && byte < 0x7f ? String.fromCharCode(byte) : `\\x${byte.toString(16).padStart(2, '0')}`;
  return out;
}

/**
 * Split an absolute path into components, refusing what an injection must never
 * contain: relative paths, NUL bytes and `..` (a `..` could climb out of an
 * allowed prefix). `.` and empty components collapse.
 */
export function components(path: Uint8Array): Buffer[] {
  if (WINDOWS) return windows.components(path);
  const buf = Buffer.from(path);
  if (buf.length === 0 || buf[0] !== SLASH) throw new Error(`not an absolute path: ${showPath(buf)}`);
  if (buf.includes(0)) throw new Error('path contains a NUL byte');
  const parts: Buffer[] = [];
  let start = 1;
  for (let i = 1; i <= buf.length; i++) {
    if (i === buf.length || buf[i] === SLASH) {
      const part = buf.subarray(start, i);
      start = i + 1;
      if (part.length === 0 || (part.length === 1 && part[0] === 0x2e)) continue;
      if (part.length === 2 && part[0] === 0x2e && part[1] === 0x2e) throw new Error(`path contains "..": ${showPath(buf)}`);
      parts.push(part);
    }
  }
  return parts;
}

export function joinComponents(parts: readonly Buffer[]): Buffer {
  if (WINDOWS) return windows.joinComponents(parts);
  if (parts.length === 0) return Buffer.from('/');
  const out: Buffer[] = [];
  for (const p of parts) out.push(Buffer.from('/'), p);
  return Buffer.concat(out);
}

/** Normalised absolute path (see components()). */
export function normalize(path: Uint8Array): Buffer {
  return joinComponents(components(path));
}

/** True when path is prefix itself or lies below it (component-wise, both normalised). */
export function isWithin(path: Buffer, prefix: Buffer): boolean {
  if (WINDOWS) return windows.isWithin(path, prefix);
  if (prefix.length === 1 && prefix[0] === SLASH) return true;
  if (path.length < prefix.length || !path.subarray(0, prefix.length).equals(prefix)) return false;
  return path.length === prefix.length || path[prefix.length] === SLASH;
}

/** The file system's root (`/`, or on Windows a drive or UNC share), which is never written to. */
export function isRoot(path: Uint8Array): boolean {
  return components(path).length === (WINDOWS ? 1 : 0);
}

/** An absolute path as the config's prefixes must be. */
export function isAbsolute(path: string): boolean {
  return WINDOWS ? windows.isAbsolute(path) : path.startsWith('/');
}

export function dirname(path: Buffer): Buffer {
  return joinComponents(components(path).slice(0, -1));
}

export function basename(path: Buffer): Buffer {
  const parts = components(path);
  return parts[parts.length - 1] ?? Buffer.alloc(0);
}
