import { isIPv4, isIPv6 } from 'node:net';
import { InvalidUrlError } from './errors';

/** An https URL of a boot image, split without normalising anything (path and query stay byte-exact). */
export interface IsoUrl {
  /** The URL exactly as given. */
  href: string;
  /** Host as written; IPv6 without the brackets. */
  host: string;
  port: number;
  /** Raw path, percent-encoding kept; "/" when the URL has none. */
  path: string;
  /** Raw query without the "?", or undefined when the URL has no "?". */
  query?: string;
}

// Whitespace (ASCII and Unicode) and C0/C1 control characters: never valid in a URL, and invisible in a terminal.
const FORBIDDEN_CHAR = /[\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff]/u;
// RFC 3986 pchar without "%" (escapes are checked separately); the query also allows "/" and "?".
const PATH_CHAR = /[A-Za-z0-9\-._~!$&'()*+,;=:@/]/;
const QUERY_CHAR = /[A-Za-z0-9\-._~!$&'()*+,;=:@/?]/;
const HOST_LABELS = /^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$/;

function fail(code: string, message: string): never {
  throw new InvalidUrlError(code, message);
}

function checkChars(part: string, allowed: RegExp, what: string): void {
  for (let i = 0; i < part.length; i++) {
    const c = part[i];
    if (c === '%') {
      if (!/^[0-9A-Fa-f]{2}$/.test(part.slice(i + 1, i + 3))) {
        fail('BAD_ESCAPE', `the URL ${what} has "%" not followed by two hex digits at "${part.slice(i, i + 3)}"`);
      }
      continue;
    }
    if (!allowed.test(c)) {
      fail('BAD_CHAR', `the URL ${what} contains ${JSON.stringify(c)}, which must be percent-encoded`);
    }
  }
}

/**
 * Validates a boot-image URL strictly: https only, a host, no credentials, a valid port, no whitespace or control
 * characters, no fragment, well-formed percent escapes. Throws InvalidUrlError naming the problem.
 */
export function validateIsoUrl(raw: string): IsoUrl {
  if (typeof raw !== 'string' || raw.length === 0) fail('EMPTY', 'the URL is empty');
  const bad = FORBIDDEN_CHAR.exec(raw);
  if (bad) {
    const cp = bad[0].codePointAt(0)!.toString(16).padStart(4, '0');
    fail('BAD_CHAR', `the URL contains whitespace or a control character (U+${cp}) at position ${bad.index}`);
  }
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):(.*)$/s.exec(raw);
  if (!m) fail('NOT_A_URL', 'not an absolute URL: expected https://host[:port]/path');
  const scheme = m[1].toLowerCase();
  if (scheme === 'http') {
    fail(
      'INSECURE_SCHEME',
      'plain http is refused: the guest would boot whatever any machine on the path substitutes; serve the image over https',
    );
  }
  if (scheme !== 'https') fail('BAD_SCHEME', `scheme "${m[1]}" is not supported: only https URLs can be booted`);
  if (!m[2].startsWith('//')) fail('NO_HOST', 'the URL has no host: expected https://host[:port]/path');

  const rest = m[2].slice(2);
  const authEnd = rest.search(/[/?#]/);
  const authority = authEnd < 0 ? rest : rest.slice(0, authEnd);
  const tail = authEnd < 0 ? '' : rest.slice(authEnd);
  if (authority.includes('@')) {
    fail(
      'CREDENTIALS',
      'the URL carries credentials (user:password@): they would be stored in the domain XML and shown on the QEMU ' +
        'command line; remove them and let the server authorise by other means (e.g. a short-lived signed path)',
    );
  }

  let host: string;
  let portText: string | undefined;
  if (authority.startsWith('[')) {
    const close = authority.indexOf(']');
    if (close < 0) fail('BAD_HOST', 'the URL has "[" without "]" around an IPv6 address');
    host = authority.slice(1, close);
    if (!isIPv6(host)) fail('BAD_HOST', `"${host}" is not a valid IPv6 address`);
    const after = authority.slice(close + 1);
    if (after !== '' && !after.startsWith(':')) fail('BAD_HOST', 'unexpected text after the IPv6 address');
    if (after !== '') portText = after.slice(1);
  } else {
    const colon = authority.indexOf(':');
    host = colon < 0 ? authority : authority.slice(0, colon);
    if (colon >= 0) portText = authority.slice(colon + 1);
    if (host === '') fail('NO_HOST', 'the URL has no host: expected https://host[:port]/path');
    if (!isIPv4(host) && !HOST_LABELS.test(host)) {
      fail('BAD_HOST', `"${host}" is not a valid host name (write internationalised names in their xn-- form)`);
    }
  }

  let port = 443;
  if (portText !== undefined) {
    if (!/^[0-9]{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) {
      fail('BAD_PORT', `port "${portText}" is not a number from 1 to 65535`);
    }
    port = Number(portText);
  }

  if (tail.includes('#')) fail('FRAGMENT', 'the URL has a #fragment, which is never sent to the server; remove it');
  const q = tail.indexOf('?');
  const path = q < 0 ? tail : tail.slice(0, q);
  const query = q < 0 ? undefined : tail.slice(q + 1);
  checkChars(path, PATH_CHAR, 'path');
  if (query !== undefined) checkChars(query, QUERY_CHAR, 'query');
  try {
    new URL(raw);
  } catch {
    fail('NOT_A_URL', 'the URL does not parse');
  }
  return { href: raw, host, port, path: path === '' ? '/' : path, query };
}

// Characters libxml2's xmlSaveUri leaves unescaped in a path (unreserved marks plus a few reserved ones).
const LIBXML_PATH_KEEP = /[A-Za-z0-9\-_.!~*'()/;@&=+$,]/;

/** The path as libvirt re-encodes it when it builds the URL it hands QEMU (libxml2 xmlSaveUri rules). */
function libxmlEscapePath(decoded: string): string {
  let out = '';
  for (const ch of decoded) {
    if (LIBXML_PATH_KEEP.test(ch)) out += ch;
    else for (const b of Buffer.from(ch, 'utf8')) out += '%' + b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/** How the URL is written as a libvirt `<source protocol="https" name=... query=...>`, and what libvirt makes of it. */
export interface LibvirtSource {
  /** Percent-decoded path: libvirt escapes `name` itself when it builds the URL. */
  name: string;
  /** Raw query: libvirt passes `query` through unchanged. */
  query?: string;
  /** The URL QEMU will actually be given by libvirt. */
  effectiveUrl: string;
  /** True when effectiveUrl equals the URL given, byte for byte. */
  exact: boolean;
}

export function libvirtSource(url: IsoUrl): LibvirtSource {
  const bytes = Buffer.from(url.path.replace(/%([0-9A-Fa-f]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1');
  let name: string;
  try {
    name = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new InvalidUrlError('BAD_ESCAPE', 'the URL path decodes to bytes that are not UTF-8, which libvirt XML cannot carry');
  }
  if (/[\u0000-\u001f\u007f]/.test(name)) {
    throw new InvalidUrlError('BAD_ESCAPE', 'the URL path decodes to control characters, which libvirt XML cannot carry');
  }
  const hostPart = isIPv6(url.host) ? `[${url.host}]` : url.host;
  const effectiveUrl = `https://${hostPart}:${url.port}${libxmlEscapePath(name)}${url.query !== undefined ? '?' + url.query : ''}`;
  const given = `https://${hostPart}:${url.port}${url.path}${url.query !== undefined ? '?' + url.query : ''}`;
  return { name, query: url.query, effectiveUrl, exact: effectiveUrl === given };
}
