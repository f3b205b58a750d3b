import { strict as assert } from 'node:assert';
import { createHash, randomBytes } from 'node:crypto';
import { Channel } from '@porthole/transport';
import { connectXenstoreHost, connectXenstoreGuest, XenstoreChannel, XenstoreClient, DEFAULT_WINDOW } from '@porthole/xenstore';
import { Fixture, startServer } from './server-fixture';
import { echoSessionCheck } from '../helpers/echo-session';

/** Send packets with backpressure: wait for 'drain' whenever write() says so. */
async function sendAll(ch: Channel, packets: Buffer[]): Promise<void> {
  for (const p of packets) {
    if (!ch.write(p)) await new Promise<void>((resolve) => ch.once('drain', resolve));
  }
}

/** The reader deletes keys right after reading them; wait for those removals. */
async function emptied(fx: Fixture, dir: string): Promise<string[]> {
  const path = `/local/domain/5/data/porthole/${dir}`;
  for (let i = 0; i < 200 && fx.server.node(path)!.children.length; i++) await new Promise((r) => setTimeout(r, 10));
  return fx.server.node(path)!.children;
}

function receive(ch: Channel, count: number): Promise<Buffer[]> {
  const got: Buffer[] = [];
  return new Promise((resolve, reject) => {
    ch.on('data', (p) => {
      got.push(p);
      if (got.length === count) resolve(got);
    });
    ch.once('close', (err) => reject(err ?? new Error('closed early')));
  });
}

describe('XenstoreChannel (packets over xenstore keys)', function () {
  this.timeout(120000);
  let fx: Fixture;
  const open: Channel[] = [];
  const pair = async (tuning: { window?: number } = {}) => {
    const host = await connectXenstoreHost(fx.domid, { socketPath: fx.socket, ...tuning }).connect();
    const guest = await connectXenstoreGuest({ path: fx.guestSocket, ...tuning }).connect();
    open.push(host, guest);
    return { host, guest };
  };
  afterEach(async () => {
    for (const c of open.splice(0)) c.close();
    await fx?.cleanup();
  });

  it('keys live under the guest subtree, readable by dom0 and that guest only', async () => {
    fx = await startServer();
    const { host } = await pair();
    assert.equal(host.kind, 'packets');
    assert.ok(host.maxPacketSize >= 1024 * 1024);
    for (const dir of ['', '/to-guest', '/to-host']) {
      assert.deepEqual(fx.server.node(`/local/domain/5/data/porthole${dir}`)!.perms, [{ domid: 0, perm: 'n' }, { domid: 5, perm: 'b' }]);
    }
    // Another guest cannot read them.
    await fx.server.listenDomain(6, `${fx.dir}/domain-6`);
    fx.server.introduceDomain(6);
    const other = await XenstoreClient.connect({ socketPath: `${fx.dir}/domain-6` });
    try {
      await assert.rejects(other.directory('/local/domain/5/data/porthole/to-guest'), /EACCES/);
    } finally {
      other.close();
    }
  });

  it('many packets of random sizes both ways, in order, intact; the reader deletes what it consumed', async () => {
    fx = await startServer();
    const { host, guest } = await pair();
    const sizes = Array.from({ length: 150 }, (_, i) => (i % 10 === 0 ? 20000 + Math.floor(Math.random() * 50000) : Math.floor(Math.random() * 3000)));
    sizes.push(0);
    const toGuest = sizes.map((n) => randomBytes(n));
    const toHost = sizes.map((n) => randomBytes(n)).reverse();
    const atGuest = receive(guest, toGuest.length);
    const atHost = receive(host, toHost.length);
    await Promise.all([sendAll(host, toGuest), sendAll(guest, toHost)]);
    const [g, h] = await Promise.all([atGuest, atHost]);
    g.forEach((p, i) => assert.ok(p.equals(toGuest[i]), `packet ${i} to the guest differs`));
    h.forEach((p, i) => assert.ok(p.equals(toHost[i]), `packet ${i} to the host differs`));
    assert.deepEqual(await emptied(fx, 'to-guest'), []);
    assert.deepEqual(await emptied(fx, 'to-host'), []);
  });

  it('16 MiB through it under a tight quota: the window holds the writer back, the quota is never exceeded', async () => {
    // 60 entries for the guest: its own nodes (about 8) plus a window of 32 keys fit, 2 windows would not.
    fx = await startServer({ maxEntries: 60 });
    const window = 32;
    const { host, guest } = await pair({ window });
    let maxKeys = 0;
    let maxEntries = 0;
    const sample = setInterval(() => {
      maxKeys = Math.max(maxKeys, fx.server.node('/local/domain/5/data/porthole/to-host')?.children.length ?? 0);
      maxEntries = Math.max(maxEntries, fx.server.entries(5));
    }, 1);
    try {
      const packet = 1024 * 1024;
      const total = 16 * packet;
      const sent = createHash('sha256');
      const got = createHash('sha256');
      let received = 0;
      const done = new Promise<void>((resolve, reject) => {
        host.on('data', (p) => {
          got.update(p);
          received += p.length;
          if (received === total) resolve();
        });
        host.once('close', (err) => reject(err ?? new Error('closed early')));
      });
      let drains = 0;
      guest.on('drain', () => drains++);
      const started = Date.now();
      for (let off = 0; off < total; off += packet) {
        const p = randomBytes(packet);
        sent.update(p);
        if (!guest.write(p)) await new Promise<void>((resolve) => guest.once('drain', resolve));
      }
      await done;
      const seconds = (Date.now() - started) / 1000;
      assert.equal(got.digest('hex'), sent.digest('hex'));
      assert.ok(drains > 0, 'the writer was never held back');
      assert.ok(maxKeys <= window, `${maxKeys} keys outstanding, window ${window}`);
      assert.ok(maxEntries <= 60, `guest owned ${maxEntries} nodes`);
      console.log(`      16 MiB guest→host in ${seconds.toFixed(1)} s (${(16 / seconds).toFixed(2)} MiB/s), at most ${maxKeys} keys outstanding`);
    } finally {
      clearInterval(sample);
    }
    assert.ok(!host.closed && !guest.closed);
  });

  it('a new writer after a restart continues the numbering; a half-sent packet is dropped, later ones arrive', async () => {
    fx = await startServer();
    const c = await fx.dom0();
    // Leftovers of a host that died mid-packet: parts 0 and 1 of 3.
    await c.write('/local/domain/5/data/porthole/to-guest/7', `0/3:${Buffer.from('stale').toString('base64')}`);
    await c.write('/local/domain/5/data/porthole/to-guest/8', `1/3:${Buffer.from('stale').toString('base64')}`);
    const { host, guest } = await pair();
    const got = receive(guest, 1);
    host.write(Buffer.from('fresh'));
    assert.deepEqual((await got).map(String), ['fresh']);
    assert.deepEqual(await emptied(fx, 'to-guest'), []);
  });

  it('garbage values in the inbound directory are skipped, not fatal', async () => {
    fx = await startServer();
    const { host, guest } = await pair();
    const c = await fx.dom0();
    await c.write('/local/domain/5/data/porthole/to-guest/0', 'not a part');
    await c.write('/local/domain/5/data/porthole/to-guest/not-a-number', 'x');
    await c.write('/local/domain/5/data/porthole/to-guest/1', '5/2:AAAA');
    const got = receive(guest, 1);
    host.write(Buffer.from('after garbage'));
    assert.deepEqual((await got).map(String), ['after garbage']);
    assert.ok(!guest.closed);
  });

  it('keys that are not key numbers as a writer makes them ("0007", names) are removed, never read as packets', async () => {
    fx = await startServer();
    const { host, guest } = await pair();
    const c = await fx.dom0();
    const dir = '/local/domain/5/data/porthole/to-guest';
    const one = `0/1:${Buffer.from('not packet 7').toString('base64')}`;
    for (const name of ['0007', '00', '1234567890123456', 'not-a-number']) await c.write(`${dir}/${name}`, one);
    const got = receive(guest, 1);
    host.write(Buffer.from('after them'));
    assert.deepEqual((await got).map(String), ['after them']);
    assert.deepEqual(await emptied(fx, 'to-guest'), []);
  });

  it('closing: the peer connection going away closes the channel with a cause; write() then returns false', async () => {
    fx = await startServer();
    const { host, guest } = await pair();
    const closed = new Promise<Error | undefined>((resolve) => guest.once('close', resolve));
    const hostClosed = new Promise<Error | undefined>((resolve) => host.once('close', resolve));
    await fx.server.close();
    const err = await closed;
    await hostClosed;
    assert.match(String(err), /xen-guest:.*(closed|EPIPE|ECONNRESET)/);
    assert.equal(guest.write(Buffer.from('x')), false);
    assert.ok(host.closed);
    await assert.rejects(connectXenstoreHost(5, { socketPath: `${fx.dir}/socket` }).connect(), /no xenstored socket/);
    assert.throws(() => connectXenstoreHost(0), /bad guest domid 0/);
  });

  it('carries a full Porthole protocol session (handshake and a stream echo)', async () => {
    fx = await startServer();
    const { host, guest } = await pair();
    await echoSessionCheck(host, guest, { bytes: 300 * 1024, chunk: 64 * 1024, readyMs: 10000 });
  });

  it('is exported with its defaults', () => {
    assert.equal(typeof XenstoreChannel.open, 'function');
    assert.ok(DEFAULT_WINDOW * 2 < 1000);
  });
});
