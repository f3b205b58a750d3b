import * as net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Channel, SocketChannel, UnixSocketConnector } from '@porthole/transport';

/** Two connected channels over a real Unix socket, plus cleanup. */
export async function socketPair(): Promise<{ host: Channel; guest: Channel; path: string; cleanup: () => void }> {
  const dir = mkdtempSync(join(tmpdir(), 'porthole-pair-'));
  const path = join(dir, 'chan.sock');
  const accepted = new Promise<net.Socket>((resolve) => {
    const server = net.createServer((s) => {
      server.close();
      resolve(s);
    });
    server.listen(path);
  });
  await new Promise((r) => setTimeout(r, 10));
  const host = await new UnixSocketConnector(path).connect();
  const guest = new SocketChannel(await accepted, `unix:${path}#guest`);
  return {
    host,
    guest,
    path,
    cleanup: () => {
      host.close();
      guest.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
