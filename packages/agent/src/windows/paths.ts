// Windows paths as the agent accepts them. The wire carries UTF-8 bytes; here they are
// checked and put in one normal form, `C:\dir\name` (drive letter upper case) or
// `\\server\share\dir\name`, so that policy prefixes compare as Windows compares names.
//
// Refused (INVALID_ARGUMENT): relative and drive-relative paths (`dir\x`, `C:x`, `\x`), the
// device and literal namespaces (`\\.\`, `\\?\`), `..`, bytes that are not UTF-8 (Windows names
// are UTF-16), characters Windows forbids in names (`<>:"|?*`, controls; a `:` would also name
// an alternate data stream), reserved device names (CON, NUL, COM1, LPT1 …, also with an
// extension: `NUL.txt` is the NUL device), and names ending in a dot or a space (Windows strips
// them, so `a.` would silently be `a`). UNC paths parse, and the policy refuses them unless an
// allowed prefix is itself a UNC path (the defaults allow none).

const RESERVED = /^(CON|PRN|AUX|NUL|COM[0-9\u00b9\u00b2\u00b3]|LPT[0-9\u00b9\u00b2\u00b3]|CONIN\$|CONOUT\$)$/i;
// eslint-disable-next-line no-control-regex
const FORBIDDEN = /[<>:"|?*\u0000-\u001f]/;
const SEPARATORS = /[\\/]/;

function text(path: Uint8Array): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(path);
  } catch {
    throw new Error('a Windows path must be UTF-8 (Windows names are UTF-16 and cannot hold other bytes)');
  }
}

/** A name (one component) Windows stores as given, or an error naming what is wrong with it. */
export function checkName(name: string, path: string): void {
  if (FORBIDDEN.test(name)) throw new Error(`${JSON.stringify(name)} in ${path} holds a character Windows does not allow in names (<>:"|?* or a control character)`);
  if (/[. ]$/.test(name)) throw new Error(`${JSON.stringify(name)} in ${path} ends in a dot or a space, which Windows strips from names`);
  if (RESERVED.test(name.split('.')[0].trimEnd())) throw new Error(`${JSON.stringify(name)} in ${path} is a reserved device name on Windows`);
}

/**
 * The root (`C:` or `\\server\share`) followed by the names, refusing what
 * the agent must never write to or read (see the top of this file).
 */
export function components(path: Uint8Array): Buffer[] {
  const p = text(path);
  if (p.includes('\0')) throw new Error('path contains a NUL byte');
  let root: string;
  let rest: string;
  const drive = /^([A-Za-z]):[\\/]/.exec(p);
  if (drive) {
    root = `${drive[1].toUpperCase()}:`;
    rest = p.slice(3);
  } else if (/^[\\/]{2}[?.]([\\/]|$)/.test(p)) {
    throw new Error(`device and literal paths (\\\\.\\, \\\\?\\) are not accepted: ${p}`);
  } else if (/^[\\/]{2}[^\\/]/.test(p)) {
    const [server, share, ...more] = p.slice(2).split(SEPARATORS);
    if (!server || !share) throw new Error(`a UNC path needs a server and a share: ${p}`);
    checkName(server, p);
    checkName(share, p);
    root = `\\\\${server}\\${share}`;
    rest = more.join('\\');
  } else {
    throw new Error(`not an absolute Windows path (C:\\dir\\name or \\\\server\\share\\name): ${p}`);
  }
  const parts = [Buffer.from(root)];
  for (const name of rest.split(SEPARATORS)) {
    if (name === '' || name === '.') continue;
    if (name === '..') throw new Error(`path contains "..": ${p}`);
    checkName(name, p);
    parts.push(Buffer.from(name));
  }
  return parts;
}

export function joinComponents(parts: readonly Buffer[]): Buffer {
  if (parts.length === 0) throw new Error('a Windows path needs a drive or a UNC share');
  if (parts.length === 1) return Buffer.from(`${parts[0]}\\`);
  return Buffer.from(parts.map((p) => p.toString('utf8')).join('\\'));
}

/** Case-insensitive, as Windows compares names (Unicode upper case, as NTFS's upcase table does). */
export function isWithin(path: Buffer, prefix: Buffer): boolean {
  const p = path.toString('utf8').toUpperCase();
  const x = prefix.toString('utf8').toUpperCase();
  if (x.endsWith('\\')) return p.startsWith(x) || `${p}\\` === x;
  return p === x || p.startsWith(`${x}\\`);
}

/** Absolute in the Windows sense: a drive root or a UNC share. */
export function isAbsolute(path: string): boolean {
  return /^[A-Za-z]:[\\/]/.test(path) || /^[\\/]{2}[^\\/?.]/.test(path);
}
