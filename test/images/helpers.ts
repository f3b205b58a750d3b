import { createHash, randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { createReadStream, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
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

export interface QemuNbd {
  socket: string;
  pid: number;
  /** imageio's form of the export URL. */
  url: string;
  stop(): Promise<void>;
}

/**
 * A real qemu-nbd serving `image` (format `format`) on a Unix socket in `dir`, export name `disk`, for several
 * clients one after another (--persistent) and at once (--shared). Extra arguments: e.g. ['--bitmap=b0', '--read-only'].
 */
export async function startQemuNbd(dir: string, image: string, format: 'qcow2' | 'raw', extra: string[] = []): Promise<QemuNbd> {
  const socket = join(dir, `nbd-${randomBytes(4).toString('hex')}.sock`);
  const child = spawn('qemu-nbd', [`--socket=${socket}`, '--export-name=disk', `--format=${format}`, '--persistent', '--shared=8', '--allocation-depth', ...extra, image], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b));
  const deadline = Date.now() + 10_000;
  while (!existsSync(socket)) {
    if (child.exitCode !== null) throw new Error(`qemu-nbd exited with ${child.exitCode}: ${stderr}`);
    if (Date.now() > deadline) {
      child.kill();
      throw new Error(`qemu-nbd did not create its socket: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    socket,
    pid: child.pid as number,
    url: `nbd:unix:${socket}:exportname=disk`,
    stop: async () => {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
    },
  };
}
