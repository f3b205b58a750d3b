import { existsSync, readFileSync } from 'node:fs';
import * as https from 'node:https';
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { rootCertificates } from 'node:tls';
import {
  BootIsoError,
  CertificateError,
  HttpStatusError,
  InvalidUrlError,
  NotIsoError,
  PreflightError,
  PreflightTimeoutError,
  RangeNotSupportedError,
  ServerUnreachableError,
  SizeUnknownError,
} from './errors';
import { ISO9660_HEAD_BYTES, sniffImage } from './sniff';
import { validateIsoUrl, type IsoUrl } from './url';

export interface PreflightOptions {
  /** Skip certificate verification (QEMU's sslverify=off). Reported loudly in `warnings`. */
  insecure?: boolean;
  /** Limit for each request, in milliseconds (default 10000). */
  timeoutMs?: number;
  /**
   * Extra CA certificate(s) (PEM file) trusted by this preflight in addition to the system store.
   * QEMU itself trusts only the system store, so the result warns when this was needed.
   */
  caFile?: string;
}

export interface PreflightResult {
  url: string;
  /** The URL after redirects (QEMU follows them too). */
  finalUrl: string;
  size: number;
  contentType?: string;
  volumeId?: string;
  /** Time to the first response byte of the ranged read, a rough figure for the guest's per-request latency. */
  latencyMs: number;
  certificate: { verified: boolean; subject?: string; issuer?: string; validTo?: string; error?: string };
  warnings: string[];
}

/** CA bundles of the usual distributions; QEMU's curl uses the system one, so the preflight must too. */
const SYSTEM_CA_BUNDLES = [
  '/etc/ssl/certs/ca-certificates.crt',
  '/etc/pki/tls/certs/ca-bundle.crt',
  '/etc/ssl/ca-bundle.pem',
  '/etc/ssl/cert.pem',
];
const MAX_REDIRECTS = 5;
/** Beyond this, QEMU's default 5 s request timeout and 256 KiB read-ahead make guest I/O errors likely. */
const SLOW_LATENCY_MS = 1000;

function trustStore(caFile: string | undefined, warnings: string[]): string[] {
  const system = SYSTEM_CA_BUNDLES.find((p) => existsSync(p));
  const cas = system ? [readFileSync(system, 'utf8')] : [...rootCertificates];
  if (!system) warnings.push('no system CA bundle found; verified against Node.js built-in roots, which QEMU does not use');
  if (caFile !== undefined) {
    try {
      cas.push(readFileSync(caFile, 'utf8'));
    } catch (err) {
      throw new PreflightError('CA_FILE', `cannot read the CA file ${caFile}: ${(err as NodeJS.ErrnoException).code ?? err}`);
    }
  }
  return cas;
}

interface Response {
  status: number;
  headers: IncomingMessage['headers'];
  body: Buffer;
  ttfbMs: number;
  socket: TLSSocket;
}

const CONNECT_ERRORS = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE']);

function mapRequestError(err: NodeJS.ErrnoException, url: string): BootIsoError {
  if (err instanceof BootIsoError) return err;
  const code = err.code ?? '';
  if (/CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ALTNAME/.test(code)) {
    return new CertificateError(
      'CERT_UNTRUSTED',
      `the certificate of ${new URL(url).host} does not verify against the system trust store (${code}: ${err.message}); ` +
        'QEMU would refuse it too. Install the CA in the system store, or use --insecure only for a server you control',
    );
  }
  if (CONNECT_ERRORS.has(code)) return new ServerUnreachableError('UNREACHABLE', `cannot reach ${new URL(url).host}: ${code}`);
  if (code === 'EPROTO' || code.startsWith('ERR_SSL') || /handshake|wrong version/i.test(err.message)) {
    return new ServerUnreachableError('TLS_HANDSHAKE', `TLS handshake with ${new URL(url).host} failed (is it serving https on that port?): ${err.message}`);
  }
  return new ServerUnreachableError('REQUEST_FAILED', `request to ${new URL(url).host} failed: ${code || err.message}`);
}

/** One request; reads at most `maxBody` bytes and aborts the transfer beyond that (a server ignoring Range would send it all). */
function request(
  url: IsoUrl,
  method: 'HEAD' | 'GET',
  headers: Record<string, string>,
  maxBody: number,
  tls: { ca: string[]; insecure: boolean },
  timeoutMs: number,
): Promise<Response> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    let ttfbMs = 0;
    const req = https.request({
      host: url.host,
      port: url.port,
      path: url.path + (url.query !== undefined ? '?' + url.query : ''),
      method,
      headers: { 'user-agent': 'porthole-bootiso-preflight', ...headers },
      ca: tls.ca,
      rejectUnauthorized: !tls.insecure,
      agent: false,
    });
    const timer = setTimeout(
      () => req.destroy(new PreflightTimeoutError('TIMEOUT', `${method} ${url.href} got no complete answer within ${timeoutMs} ms`)),
      timeoutMs,
    );
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(mapRequestError(err, url.href));
    });
    req.on('response', (res) => {
      ttfbMs = Date.now() - started;
      const chunks: Buffer[] = [];
      let got = 0;
      const finish = () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), ttfbMs, socket: res.socket as TLSSocket });
      };
      res.on('data', (chunk: Buffer) => {
        const room = maxBody - got;
        if (room > 0) chunks.push(chunk.subarray(0, room));
        got += chunk.length;
        if (got >= maxBody && res.statusCode !== 206) {
          // Enough to judge the content; don't pull a whole ISO through a server that ignores Range.
          finish();
          req.destroy();
        } else if (got > maxBody) {
          clearTimeout(timer);
          req.destroy();
          reject(new RangeNotSupportedError('RANGE_OVERRUN', `the server sent more than the ${maxBody} bytes requested`));
        }
      });
      res.on('end', finish);
      res.on('error', (err) => {
        clearTimeout(timer);
        reject(mapRequestError(err, url.href));
      });
    });
    req.end();
  });
}

function describeStatus(method: string, url: string, res: Response): HttpStatusError {
  const extra = res.status === 405 && method === 'HEAD' ? ' (QEMU sends HEAD first to learn the size)' : '';
  return new HttpStatusError(`HTTP_${res.status}`, `the server answered ${method} ${url} with HTTP ${res.status}${extra}`);
}

/**
 * Checks, before anything is changed, that QEMU will be able to boot from the URL: the server answers HEAD with a
 * size and `Accept-Ranges: bytes`, honours a Range GET with a correct 206/Content-Range, serves bytes that are an
 * ISO 9660 image, and has a certificate that verifies (unless insecure). Throws a PreflightError subclass otherwise.
 */
export async function preflight(rawUrl: string, opts: PreflightOptions = {}): Promise<PreflightResult> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const warnings: string[] = [];
  const tls = { ca: trustStore(opts.caFile, warnings), insecure: !!opts.insecure };
  let url = validateIsoUrl(rawUrl);

  let head = await request(url, 'HEAD', {}, 0, tls, timeoutMs);
  for (let hops = 0; head.status >= 300 && head.status < 400 && head.headers.location; hops++) {
    if (hops === MAX_REDIRECTS) throw new HttpStatusError('TOO_MANY_REDIRECTS', `more than ${MAX_REDIRECTS} redirects from ${rawUrl}`);
    const next = new URL(head.headers.location, url.href).href;
    try {
      url = validateIsoUrl(next);
    } catch (err) {
      if (!(err instanceof InvalidUrlError)) throw err;
      throw new HttpStatusError('BAD_REDIRECT', `the server redirects to ${next}, which cannot be booted: ${err.message}`);
    }
    head = await request(url, 'HEAD', {}, 0, tls, timeoutMs);
  }
  if (head.status !== 200) throw describeStatus('HEAD', url.href, head);

  const cert = head.socket.getPeerCertificate();
  const cn = (v: string | string[] | undefined) => (v === undefined ? undefined : [v].flat().join(', '));
  const certificate = {
    verified: head.socket.authorized,
    subject: cn(cert?.subject?.CN),
    issuer: cn(cert?.issuer?.CN),
    validTo: cert?.valid_to,
    error: head.socket.authorizationError ? String(head.socket.authorizationError) : undefined,
  };
  if (opts.insecure) {
    warnings.push(
      `INSECURE: certificate verification is OFF${certificate.verified ? '' : ` and it would have failed (${certificate.error})`}; ` +
        'anyone on the path can substitute the boot image',
    );
  } else if (opts.caFile !== undefined) {
    warnings.push('verified with the extra CA file; QEMU uses only the system trust store, so install that CA there too');
  }

  const lengthHeader = head.headers['content-length'];
  if (lengthHeader === undefined || !/^\d+$/.test(lengthHeader)) {
    throw new SizeUnknownError('NO_SIZE', 'the server does not report a Content-Length for HEAD; QEMU needs the image size');
  }
  const size = Number(lengthHeader);
  if (size === 0) throw new SizeUnknownError('EMPTY', 'the server reports a size of 0 bytes');
  if (!/\bbytes\b/i.test(String(head.headers['accept-ranges'] ?? ''))) {
    throw new RangeNotSupportedError(
      'NO_ACCEPT_RANGES',
      'the server does not announce "Accept-Ranges: bytes"; QEMU refuses such servers ("Server does not support \'range\'")',
    );
  }

  const readRange = async (start: number, end: number) => {
    const res = await request(url, 'GET', { range: `bytes=${start}-${end}` }, end - start + 1, tls, timeoutMs);
    if (res.status === 200) {
      throw new RangeNotSupportedError('RANGE_IGNORED', `the server ignored "Range: bytes=${start}-${end}" and answered 200 with the whole file`);
    }
    if (res.status !== 206) throw describeStatus('GET', url.href, res);
    const cr = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(String(res.headers['content-range'] ?? ''));
    if (!cr || Number(cr[1]) !== start || Number(cr[2]) !== end || Number(cr[3]) !== size || res.body.length !== end - start + 1) {
      throw new RangeNotSupportedError(
        'BAD_CONTENT_RANGE',
        `asked for bytes ${start}-${end} of ${size}, got Content-Range "${res.headers['content-range'] ?? '(none)'}" ` +
          `with ${res.body.length} bytes`,
      );
    }
    return res;
  };
  const first = await readRange(0, Math.min(ISO9660_HEAD_BYTES, size) - 1);
  if (size > ISO9660_HEAD_BYTES) await readRange(size - 2048, size - 1);

  const sniffed = sniffImage(first.body);
  if (!sniffed.iso) {
    throw new NotIsoError(`${url.href} is not an ISO 9660 image (no "CD001" at offset 32769): it looks like ${sniffed.looksLike}`, sniffed.looksLike);
  }
  if (first.ttfbMs > SLOW_LATENCY_MS) {
    warnings.push(`the server took ${first.ttfbMs} ms to answer a read; the guest may see I/O errors (raise the QEMU curl timeout/readahead)`);
  }
  return {
    url: rawUrl,
    finalUrl: url.href,
    size,
    contentType: head.headers['content-type'],
    volumeId: sniffed.volumeId,
    latencyMs: first.ttfbMs,
    certificate,
    warnings,
  };
}
