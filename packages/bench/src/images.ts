// Image transfer over loopback: upload and download of one large raw image through the image server (1 and 4
// connections) next to a plain copy of the same file on the same disk, the limit any transfer here can reach.
import { randomBytes, randomUUID } from 'node:crypto';
import { copyFileSync, createReadStream, createWriteStream, mkdtempSync, openSync, fsyncSync, closeSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createImageServer, downloadImage, ImageEndpoint, uploadImage } from '@porthole/images';
import { BenchTable, MiB, mibPerSecond } from './table';

export interface ImagesBenchOptions {
  bytes: number;
  /** Connection counts to measure (default 1 and 4). */
  connections?: number[];
}

/** A raw image of `bytes` incompressible bytes (a 64 MiB random block repeated). */
function makeImage(path: string, bytes: number): void {
  const block = randomBytes(64 * MiB);
  const fd = openSync(path, 'w');
  try {
    for (let pos = 0; pos < bytes; pos += block.length) writeSync(fd, block, 0, Math.min(block.length, bytes - pos), pos);
  } finally {
    closeSync(fd);
  }
}

function fsyncPath(path: string): void {
  const fd = openSync(path, 'r+');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

async function timed(work: () => Promise<void> | void): Promise<number> {
  const t0 = performance.now();
  await work();
  return performance.now() - t0;
}

export async function benchImages(opts: ImagesBenchOptions, log: (m: string) => void = () => undefined): Promise<BenchTable> {
  const { bytes } = opts;
  const counts = opts.connections ?? [1, 4];
  const dir = mkdtempSync(join(tmpdir(), 'porthole-bench-images-'));
  const storage = join(dir, 'storage');
  const src = join(dir, 'source.raw');
  const rows: (string | number)[][] = [];
  const server = await createImageServer({ storageDir: storage, listen: 'tcp:127.0.0.1:0' });
  try {
    log(`writing a ${bytes / MiB} MiB source image`);
    makeImage(src, bytes);
    fsyncPath(src);
    const copy = join(dir, 'copy.raw');
    const kernelCopy = await timed(() => {
      copyFileSync(src, copy);
      fsyncPath(copy);
    });
    rmSync(copy);
    const streamCopy = await timed(async () => {
      await pipeline(createReadStream(src, { highWaterMark: MiB }), createWriteStream(copy, { highWaterMark: MiB }));
      fsyncPath(copy);
    });
    rmSync(copy);
    const limit = mibPerSecond(bytes, Math.min(kernelCopy, streamCopy));
    rows.push(['plain copy: fs.copyFile (copy_file_range) + fsync', '-', mibPerSecond(bytes, kernelCopy), kernelCopy / 1000, '']);
    rows.push(['plain copy: read/write streams + fsync', '-', mibPerSecond(bytes, streamCopy), streamCopy / 1000, '']);
    for (const n of counts) {
      const ep = new ImageEndpoint(server.url, { connections: n });
      try {
        log(`upload, ${n} connection(s)`);
        const up = await server.tickets.create({ image: 'bench.raw', size: bytes, ops: ['write'] });
        const upMs = await timed(async () => void (await uploadImage(ep, up.id, src, { connections: n })));
        await server.tickets.revoke(up.id);
        rows.push(['upload (PUT ranges, then finalize: fsync + format check)', n, mibPerSecond(bytes, upMs), upMs / 1000, mibPerSecond(bytes, upMs) / limit]);
        log(`download, ${n} connection(s)`);
        const down = await server.tickets.create({ image: 'bench.raw', ops: ['read'] });
        const target = join(dir, 'download.raw');
        const downMs = await timed(async () => void (await downloadImage(ep, down.id, target, { connections: n })));
        await server.tickets.revoke(down.id);
        if (statSync(target).size !== bytes) throw new Error(`download has ${statSync(target).size} bytes, not ${bytes}`);
        rm([target, join(storage, 'bench.raw')]);
        rows.push(['download (ranged GETs, then fsync)', n, mibPerSecond(bytes, downMs), downMs / 1000, mibPerSecond(bytes, downMs) / limit]);
      } finally {
        ep.close();
      }
    }
    {
      // Last, so it runs as warm as the rows above. imageio's flow: a ticket in imageio's schema (what vdsm sends), OPTIONS first, then as many writers as the
      // client asks for up to the server's max_writers, PUT ?flush=n, one flush, and the ticket's DELETE.
      const ep = new ImageEndpoint(server.url, { connections: 4 });
      try {
        log('upload, imageio ticket, 4 connections negotiated through OPTIONS');
        const uuid = randomUUID();
        await server.tickets.add({ uuid, size: bytes, ops: ['write'], timeout: 300, url: `file://${join(storage, 'bench-imageio.raw')}` });
        let used = 0;
        const upMs = await timed(async () => {
          used = (await uploadImage(ep, uuid, src, { connections: 4 })).connections;
          await server.tickets.revoke(uuid);
        });
        if (statSync(join(storage, 'bench-imageio.raw')).size !== bytes) throw new Error('the imageio-flow upload was not published');
        rm([join(storage, 'bench-imageio.raw')]);
        rows.push(['upload, imageio ticket (OPTIONS → max_writers, PUT flush=n, flush, DELETE publishes)', `${used} (OPTIONS)`, mibPerSecond(bytes, upMs), upMs / 1000, mibPerSecond(bytes, upMs) / limit]);
      } finally {
        ep.close();
      }
    }
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return {
    title: `Image transfer over loopback (${bytes / MiB} MiB raw image, plain HTTP on 127.0.0.1)`,
    columns: ['transfer', 'connections', 'MiB/s', 's', 'of the faster plain copy'],
    rows: rows.map((r) => r.map((c, i) => (i === 4 && typeof c === 'number' ? `${Math.round(c * 100)}%` : c))),
    notes: [
      `Source, storage and download target are on the same file system (${tmpdir()}); every figure includes an fsync of what was written. The source file stays in the page cache between runs (nothing drops caches).`,
      'ovirt-imageio, the reference to beat, is not in this table: it is not packaged for Debian 12 and PyPI is not reachable from this machine, so it could not be installed and run here.',
    ],
  };
}

function rm(paths: string[]): void {
  for (const p of paths) rmSync(p, { force: true });
}
