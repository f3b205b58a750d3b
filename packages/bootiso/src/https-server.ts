import { createReadStream, statSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import { basename } from 'node:path';

export interface RangeHttpsServerOptions {
  /** The file to serve (read on every request, so it may be replaced while serving). */
  file: string;
  /** PEM certificate chain and private key. */
  cert: string | Buffer;
  key: string | Buffer;
  /** Honour single byte ranges and announce Accept-Ranges (QEMU needs this); false serves whole-file 200s only. */
  range: boolean;
  /** Address to listen on; default 127.0.0.1. */
  host?: string;
  /** Port; default 0 (any free port). */
  port?: number;
  /** URL path the file is served at; default "/" + the file's base name, percent-encoded. */
  path?: string;
}

export interface RangeHttpsServer {
  /** https URL of the file. */
  url: string;
  port: number;
  /** Requests answered so far; `ranged` counts 206 answers. */
  stats: { requests: number; ranged: number };
  close(): Promise<void>;
}

/** Parses a single "bytes=a-b" / "bytes=a-" / "bytes=-n" range; undefined when unsatisfiable or not a single range. */
function parseRange(header: string, size: number): { start: number; end: number } | undefined {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  if (m[1] === '') {
    const n = Math.min(Number(m[2]), size);
    return n > 0 ? { start: size - n, end: size - 1 } : undefined;
  }
  const start = Number(m[1]);
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  return start <= end && start < size ? { start, end } : undefined;
}

/**
 * A small https file server for one ISO: HEAD and GET, byte ranges when `range` is set. Used to serve a local ISO
 * to QEMU's https block driver, and by tests as a well- or ill-behaved server.
 */
export async function startRangeHttpsServer(opts: RangeHttpsServerOptions): Promise<RangeHttpsServer> {
  const path = opts.path ?? '/' + encodeURIComponent(basename(opts.file));
  const stats = { requests: 0, ranged: 0 };
  const handle = (req: IncomingMessage, res: ServerResponse) => {
    stats.requests++;
    const reqPath = (req.url ?? '').split('?')[0];
    if (reqPath !== path) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    let size: number;
    try {
      size = statSync(opts.file).size;
    } catch {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('file gone\n');
      return;
    }
    const headers: Record<string, string | number> = { 'content-type': 'application/octet-stream' };
    if (opts.range) headers['accept-ranges'] = 'bytes';
    let start = 0;
    let end = size - 1;
    let status = 200;
    if (opts.range && req.headers.range !== undefined) {
      const r = parseRange(req.headers.range, size);
      if (!r) {
        res.writeHead(416, { ...headers, 'content-range': `bytes */${size}` }).end();
        return;
      }
      ({ start, end } = r);
      status = 206;
      stats.ranged++;
      headers['content-range'] = `bytes ${start}-${end}/${size}`;
    }
    headers['content-length'] = Math.max(0, end - start + 1);
    res.writeHead(status, headers);
    if (req.method === 'HEAD' || size === 0) {
      res.end();
      return;
    }
    const stream = createReadStream(opts.file, { start, end });
    stream.on('error', () => res.destroy());
    res.on('close', () => stream.destroy());
    stream.pipe(res);
  };
  const server = https.createServer({ cert: opts.cert, key: opts.key }, handle);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const hostPart = addr.address.includes(':') ? `[${addr.address}]` : addr.address;
  return {
    url: `https://${hostPart}:${addr.port}${path}`,
    port: addr.port,
    stats,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
