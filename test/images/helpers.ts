import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createImageServer, ImageEndpoint, type ImageServer, type ImageServerOptions } from '@porthole/images';

export interface Rig {
  dir: string;
  storage: string;
  server: ImageServer;
  ep: ImageEndpoint;
  close(): Promise<void>;
}

/** An image server over a fresh storage directory on 127.0.0.1 (plain http: loopback), plus a client for it. */
export async function startRig(opts: Partial<ImageServerOptions> = {}): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'porthole-images-'));
  const storage = join(dir, 'storage');
  const server = await createImageServer({ storageDir: storage, listen: 'tcp:127.0.0.1:0', ...opts });
  const ep = new ImageEndpoint(server.url, { connections: 4 });
  return {
    dir, storage, server, ep,
    close: async () => {
      ep.close();
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path), h);
  return h.digest('hex');
}

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A file of `size` random bytes in `dir`; returns its path and content. */
export function randomFile(dir: string, name: string, size: number): { path: string; data: Buffer } {
  const data = randomBytes(size);
  const path = join(dir, name);
  writeFileSync(path, data);
  return { path, data };
}

export async function body(res: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** Status code and parsed JSON error/body of a request through the rig's endpoint. */
export async function call(ep: ImageEndpoint, method: string, path: string, opts: { headers?: Record<string, string | number>; body?: Buffer | string } = {}): Promise<{ status: number; headers: IncomingMessage['headers']; data: Buffer; json: () => any }> {
  const res = await ep.request(method, path, opts);
  const data = await body(res);
  return { status: res.statusCode ?? 0, headers: res.headers, data, json: () => JSON.parse(data.toString('utf8')) };
}
