import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { XenstoreServer, XenstoreServerOptions, XenstoreClient } from '@porthole/xenstore';

/** A test xenstored with dom0 on `socket` and guest `domid` (introduced) on `guestSocket`. */
export interface Fixture {
  server: XenstoreServer;
  dir: string;
  socket: string;
  guestSocket: string;
  domid: number;
  dom0(): Promise<XenstoreClient>;
  guest(): Promise<XenstoreClient>;
  cleanup(): Promise<void>;
}

export async function startServer(options: XenstoreServerOptions = {}, domid = 5): Promise<Fixture> {
  const dir = mkdtempSync(join(tmpdir(), 'porthole-xs-'));
  const server = new XenstoreServer(options);
  const socket = join(dir, 'socket');
  const guestSocket = join(dir, `domain-${domid}`);
  await server.listen(socket);
  await server.listenDomain(domid, guestSocket);
  server.introduceDomain(domid);
  const clients: XenstoreClient[] = [];
  const track = async (p: Promise<XenstoreClient>) => {
    const c = await p;
    clients.push(c);
    return c;
  };
  return {
    server, dir, socket, guestSocket, domid,
    dom0: () => track(XenstoreClient.connect({ socketPath: socket })),
    guest: () => track(XenstoreClient.connect({ socketPath: guestSocket })),
    cleanup: async () => {
      for (const c of clients) c.close();
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
