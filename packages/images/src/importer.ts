import { constants as fsc } from 'node:fs';
import { open } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import * as https from 'node:https';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { ImageError } from './errors';
import { IntervalSet } from './ranges';
import type { ImportProgress } from './tickets';

export interface ImportRequest {
  /** https URL of the image. */
  url: string;
  /** PEM CA certificate(s) to trust instead of the system store (a private CA). */
  ca?: string;
  /** Connection attempts before giving up (default 5); each retry resumes with Range. */
  maxAttempts?: number;
}

interface Target {
  path: string;
  progress: ImportProgress;
  written: IntervalSet;
}

const IDLE_MS = 30_000;

/** URLs may carry credentials or signed query strings; status and errors show only scheme, host and path. */
export function redactUrl(u: string): string {
  const url = new URL(u);
  return `${url.protocol}//${url.host}${url.pathname}`;
}

function checkUrl(u: unknown): URL {
  let url: URL;
  try {
    url = new URL(String(u));
  } catch {
    throw new ImageError(400, 'url is not a valid URL');
  }
  if (url.protocol !== 'https:') throw new ImageError(400, `only https URLs can be imported, not ${url.protocol}`);
  return url;
}

/** GET with redirects (https only, at most 5) and an idle timeout; resolves with the final response. */
function get(url: URL, headers: Record<string, string>, ca: string | undefined, signal: AbortSignal, hops = 0): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { headers, signal, ...(ca ? { ca } : {}) }, (res) => {
      const status = res.statusCode ?? 0;
      if (status >= 300 && status < 400 && res.headers.location) {
        res.resume();
        if (hops >= 5) return reject(new Error('too many redirects'));
        let next: URL;
        try {
          next = checkUrl(new URL(res.headers.location, url).toString());
        } catch (err) {
          return reject(err);
        }
        return resolve(get(next, headers, ca, signal, hops + 1));
      }
      resolve(res);
    });
    req.setTimeout(IDLE_MS, () => req.destroy(new Error(`no data from ${url.host} for ${IDLE_MS / 1000} s`)));
    req.on('error', reject);
    req.end();
  });
}

async function receive(res: IncomingMessage, target: Target, offset: number, total: number): Promise<void> {
  const fh = await open(target.path, fsc.O_WRONLY | fsc.O_NOFOLLOW);
  const ws = fh.createWriteStream({ start: offset, highWaterMark: 1 << 20 });
  let seen = 0;
  res.on('data', (chunk: Buffer) => {
    seen += chunk.length;
    if (offset + seen > total) res.destroy(new Error(`the server sent more than the announced ${total} bytes`));
    else target.progress.bytes = offset + seen;
  });
  try {
    await pipeline(res, ws);
  } finally {
    target.written.add(offset, offset + ws.bytesWritten);
    target.progress.bytes = offset + ws.bytesWritten;
  }
}

/**
 * Opens the download; once the server has answered with a size, `prepare` creates the target file, and the body
 * is written in the background (`finished`). A cut connection is resumed with `Range: bytes=N-` (and If-Range, so
 * a changed file restarts from zero instead of mixing two versions).
 */
export async function downloadInto(req: ImportRequest, signal: AbortSignal, prepare: (size: number) => Promise<Target>): Promise<{ finished: Promise<void> }> {
  const url = checkUrl(req.url);
  const maxAttempts = req.maxAttempts ?? 5;
  const where = redactUrl(url.toString());
  let first: IncomingMessage;
  try {
    first = await get(url, {}, req.ca, signal);
  } catch (err) {
    throw new ImageError(502, `import from ${where} failed: ${(err as Error).message}`);
  }
  if (first.statusCode !== 200) {
    first.resume();
    throw new ImageError(502, `import from ${where} failed: the server answered ${first.statusCode}`);
  }
  const total = Number(first.headers['content-length']);
  if (!Number.isSafeInteger(total) || first.headers['content-length'] === undefined) {
    first.resume();
    throw new ImageError(502, `import from ${where} failed: the server sent no Content-Length`);
  }
  const validator = (first.headers.etag as string | undefined) ?? (first.headers['last-modified'] as string | undefined);
  let target: Target;
  try {
    target = await prepare(total);
  } catch (err) {
    first.destroy();
    throw err;
  }
  const { progress } = target;

  const reopen = async (): Promise<IncomingMessage> => {
    const headers: Record<string, string> = { range: `bytes=${progress.bytes}-` };
    if (validator) headers['if-range'] = validator;
    const res = await get(url, headers, req.ca, signal);
    if (res.statusCode === 206) {
      const m = /^bytes (\d+)-/.exec(String(res.headers['content-range']));
      if (m && Number(m[1]) === progress.bytes) return res;
      res.destroy();
      throw new Error(`the server resumed at the wrong offset (${res.headers['content-range']})`);
    }
    if (res.statusCode === 200) {
      // Range ignored or the file changed: start over.
      progress.bytes = 0;
      target.written.clear();
      return res;
    }
    res.resume();
    throw new Error(`the server answered ${res.statusCode} to a resume request`);
  };

  const finished = (async () => {
    let res: IncomingMessage | undefined = first;
    for (let attempt = 1; ; attempt++) {
      progress.attempts = attempt;
      try {
        res ??= await reopen();
        await receive(res, target, progress.bytes, total);
        if (progress.bytes === total) return;
        throw new Error(`the connection ended after ${progress.bytes} of ${total} bytes`);
      } catch (err) {
        res = undefined;
        if (signal.aborted) throw new Error('import aborted');
        if (attempt >= maxAttempts) throw new Error(`${(err as Error).message} (gave up after ${attempt} attempts)`);
        await sleep(200 * attempt);
      }
    }
  })();
  return { finished };
}
