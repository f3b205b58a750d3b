import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import * as net from 'node:net';
import {
  XenstoreClient, XenstoreError, XsType, MessageDecoder, encodeMessage, strings, splitStrings, XENSTORE_PAYLOAD_MAX,
} from '@porthole/xenstore';
import { Fixture, startServer } from './server-fixture';

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof XenstoreError, `expected a XenstoreError, got ${String(err)}`);
    assert.equal(err.code, code);
    return true;
  });
}

/** Collects a listener watch's events. */
function collector(): { events: string[]; fn: (p: string) => void; until: (n: number) => Promise<void> } {
  const events: string[] = [];
  return {
    events,
    fn: (p) => events.push(p),
    until: async (n) => {
      for (let i = 0; i < 250 && events.length < n; i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(events.length >= n, `expected ${n} events, got ${JSON.stringify(events)}`);
    },
  };
}

describe('xenstore client against the test server', function () {
  this.timeout(20000);
  let fx: Fixture;
  afterEach(async () => {
    await fx?.cleanup();
  });

  it('wire: header layout, NUL conventions, decoder across split chunks, oversize length refused', () => {
    const m = encodeMessage({ type: XsType.WRITE, reqId: 7, txId: 3, payload: strings(['/a'], Buffer.from('v')) });
    assert.equal(m.toString('hex'), '0b000000' + '07000000' + '03000000' + '04000000' + Buffer.from('/a\0v').toString('hex'));
    assert.deepEqual(splitStrings(Buffer.from('a\0b\0')), ['a', 'b']);
    const d = new MessageDecoder();
    assert.deepEqual(d.push(m.subarray(0, 5)), []);
    const [got] = d.push(m.subarray(5));
    assert.equal(got.reqId, 7);
    assert.equal(got.payload.toString(), '/a\0v');
    const bad = Buffer.alloc(16);
    bad.writeUInt32LE(XENSTORE_PAYLOAD_MAX + 1, 12);
    assert.throws(() => new MessageDecoder().push(bad), /over the 4096-byte limit/);
  });

  it('read, write (binary values), mkdir, rm, directory, errors with their xenstored names', async () => {
    fx = await startServer();
    const c = await fx.dom0();
    await c.write('/t/bin', Buffer.from([0, 1, 2, 255]));
    assert.deepEqual([...(await c.read('/t/bin'))], [0, 1, 2, 255]);
    await c.mkdir('/t/dir/sub');
    assert.deepEqual(await c.directory('/t'), ['bin', 'dir']);
    assert.equal(await c.readString('/t/dir'), '');
    await rejectsWith(c.read('/t/none'), 'ENOENT');
    assert.equal(await c.tryRead('/t/none'), undefined);
    await c.rm('/t/dir');
    assert.deepEqual(await c.directory('/t'), ['bin']);
    await c.rm('/t/dir'); // already gone: fine
    await rejectsWith(c.rm('/nope/nope'), 'ENOENT');
    await rejectsWith(c.rm('/'), 'EINVAL');
    await rejectsWith(c.read('/bad//path'), 'EINVAL');
    await rejectsWith(c.write('/x', Buffer.alloc(XENSTORE_PAYLOAD_MAX)), 'E2BIG'); // refused before sending
    assert.equal(await c.readString('/t/bin').then(() => 'still connected'), 'still connected');
    assert.equal(await c.getDomainPath(5), '/local/domain/5');
    assert.match(new XenstoreError('ENOENT', 'read', '/x').message, /xenstore read \/x: ENOENT \(no such node\)/);
  });

  it('many requests outstanding at once are matched by req_id', async () => {
    fx = await startServer();
    const c = await fx.dom0();
    await Promise.all(Array.from({ length: 200 }, (_, i) => c.write(`/many/k${i}`, `v${i}`)));
    const values = await Promise.all(Array.from({ length: 200 }, (_, i) => c.readString(`/many/k${i}`)));
    values.forEach((v, i) => assert.equal(v, `v${i}`));
    const mixed = await Promise.allSettled([c.read('/many/k1'), c.read('/many/none'), c.read('/many/k2')]);
    assert.deepEqual(mixed.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled']);
  });

  it('directory of more than 4096 bytes of names falls back to DIRECTORY_PART', async () => {
    fx = await startServer();
    const c = await fx.dom0();
    const names = Array.from({ length: 400 }, (_, i) => `a-rather-long-child-name-${i}`);
    await Promise.all(names.map((n) => c.write(`/wide/${n}`, '')));
    await rejectsWith(c.request(XsType.DIRECTORY, strings(['/wide']), 0, 'directory', '/wide'), 'E2BIG');
    assert.deepEqual(await c.directory('/wide'), names);
    assert.deepEqual(await c.directoryParts('/wide'), names);
  });

  it('permissions: get/set, owner and ACL, guest restrictions, EACCES that reveals nothing', async () => {
    fx = await startServer();
    const c = await fx.dom0();
    const g = await fx.guest();
    await c.write('/p/node', 'x');
    assert.deepEqual(await c.getPerms('/p/node'), [{ domid: 0, perm: 'n' }]);
    await rejectsWith(g.read('/p/node'), 'EACCES');
    await rejectsWith(g.read('/p/missing'), 'EACCES'); // not ENOENT: the parent is unreadable
    await c.setPerms('/p/node', [{ domid: 0, perm: 'n' }, { domid: 5, perm: 'r' }]);
    assert.equal(await g.readString('/p/node'), 'x');
    await rejectsWith(g.write('/p/node', 'y'), 'EACCES');
    await rejectsWith(g.setPerms('/p/node', [{ domid: 5, perm: 'b' }]), 'EACCES');
    // The guest owns what it creates in its data directory, and may not give the node away.
    await g.write('data/mine', '1');
    assert.deepEqual(await g.getPerms('data/mine'), [{ domid: 5, perm: 'n' }]);
    await g.setPerms('data/mine', [{ domid: 5, perm: 'n' }, { domid: 7, perm: 'r' }]);
    await rejectsWith(g.setPerms('data/mine', [{ domid: 7, perm: 'n' }]), 'EPERM');
    await rejectsWith(g.getDomainPath(5).then(() => g.request(XsType.INTRODUCE, strings(['9', '0', '0']), 0, 'introduce')), 'EACCES');
  });

  it('watches: event on registration, node and descendants, relative paths for a guest, rm of a parent, unwatch', async () => {
    fx = await startServer();
    const c = await fx.dom0();
    const g = await fx.guest();
    const a = collector();
    const w = await c.watch('/w/x', a.fn);
    await a.until(1);
    assert.deepEqual(a.events, ['/w/x']);
    await c.write('/w/x/y', '1');
    await c.write('/w/other', '1');
    await c.write('/w/x', '2');
    await c.rm('/w'); // removal of a parent: the event names the watched path
    await a.until(4);
    assert.deepEqual(a.events, ['/w/x', '/w/x/y', '/w/x', '/w/x']);
    await w.close();
    await c.write('/w/x', 'after');
    const gEvents = collector();
    await g.watch('data', gEvents.fn);
    await c.write('/local/domain/5/data/z', '1');
    await gEvents.until(2);
    assert.deepEqual(gEvents.events, ['data', 'data/z']);
    assert.equal(a.events.length, 4);
    // A guest hears nothing about nodes it cannot read.
    const hidden = collector();
    await g.watch('/secret', hidden.fn);
    await c.write('/secret/k', 'v');
    await c.write('/local/domain/5/data/z', '2');
    await gEvents.until(3);
    assert.deepEqual(hidden.events, ['/secret']);
  });

  it('watch as an async iterator; watchChildren yields new child keys (the Nova data/host pattern)', async () => {
    fx = await startServer();
    const c = await fx.dom0();
    const g = await fx.guest();
    const w = await c.watch('/it');
    const it = w[Symbol.asyncIterator]();
    assert.deepEqual(await it.next(), { value: '/it', done: false });
    await c.write('/it/a', '1');
    assert.deepEqual(await it.next(), { value: '/it/a', done: false });
    await w.close();
    assert.deepEqual(await it.next(), { value: undefined, done: true });

    await c.write('/local/domain/5/data/host/req-1', '{}');
    const seen: string[] = [];
    const gen = g.watchChildren('data/host');
    for await (const name of gen) {
      seen.push(name);
      await g.rm(`data/host/${name}`);
      if (seen.length === 1) await c.write('/local/domain/5/data/host/req-2', '{}');
      if (seen.length === 2) await c.write('/local/domain/5/data/host/req-1', '{}'); // reused id: yielded again
      if (seen.length === 3) break;
    }
    assert.deepEqual(seen, ['req-1', 'req-2', 'req-1']);
  });

  it('transactions: isolation, commit, conflict answered EAGAIN, retry helper, abort', async () => {
    fx = await startServer();
    const c = await fx.dom0();
    const other = await fx.dom0();
    await c.write('/tx/n', '0');
    const t = await c.transactionStart();
    assert.equal(await t.readString('/tx/n'), '0');
    await t.write('/tx/n', '1');
    assert.equal(await other.readString('/tx/n'), '0'); // not visible before the commit
    await other.write('/tx/n', 'intervening');
    await rejectsWith(c.transactionEnd(t, true), 'EAGAIN');
    assert.equal(await c.readString('/tx/n'), 'intervening');

    let runs = 0;
    const result = await c.transaction(async (tx) => {
      runs++;
      const v = await tx.readString('/tx/n');
      if (runs === 1) await other.write('/tx/n', 'again'); // forces one conflict
      await tx.write('/tx/n', `${v}+1`);
      return v;
    });
    assert.equal(runs, 2);
    assert.equal(result, 'again');
    assert.equal(await c.readString('/tx/n'), 'again+1');

    const events = collector();
    await other.watch('/tx', events.fn);
    await events.until(1);
    await assert.rejects(c.transaction(async (tx) => {
      await tx.write('/tx/n', 'discarded');
      throw new Error('changed my mind');
    }), /changed my mind/);
    assert.equal(await c.readString('/tx/n'), 'again+1');
    await c.transaction(async (tx) => tx.write('/tx/m', 'in tx'));
    await events.until(2);
    assert.deepEqual(events.events, ['/tx', '/tx/m']); // the aborted write fired nothing; the commit fired once
    await rejectsWith(c.request(XsType.READ, strings(['/tx/n']), 12345, 'read'), 'ENOENT'); // unknown transaction
  });

  it('quotas with C xenstored names: ENOSPC for node size and entries, E2BIG for watches', async () => {
    fx = await startServer({ maxEntries: 20, maxWatches: 3 });
    const g = await fx.guest();
    await rejectsWith(g.write('data/big', 'x'.repeat(2048)), 'ENOSPC');
    await g.write('data/ok', 'x'.repeat(1900));
    const before = fx.server.entries(5);
    const results = await Promise.allSettled(Array.from({ length: 40 }, (_, i) => g.write(`data/k${i}`, 'v')));
    assert.equal(fx.server.entries(5), 20);
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 20 - before);
    await rejectsWith(g.write('data/one-more', 'v'), 'ENOSPC');
    for (let i = 0; i < 3; i++) await g.watch(`data/w${i}`);
    await rejectsWith(g.watch('data/w9'), 'E2BIG');
  });

  it('quotas with oxenstored names: E2BIG for an oversized value, EQUOTA for entries', async () => {
    fx = await startServer({ dialect: 'oxenstored', maxEntries: 10 });
    const g = await fx.guest();
    await rejectsWith(g.write('data/big', 'x'.repeat(2049)), 'E2BIG');
    await g.write('data/exact', 'x'.repeat(2048));
    await Promise.allSettled(Array.from({ length: 20 }, (_, i) => g.write(`data/k${i}`, 'v')));
    await rejectsWith(g.write('data/more', 'v'), 'EQUOTA');
  });

  it('the server drops a client that breaks the payload limit, and survives garbage', async () => {
    fx = await startServer();
    const s = net.connect(fx.socket);
    await new Promise((r) => s.once('connect', r));
    const header = Buffer.alloc(16);
    header.writeUInt32LE(XsType.READ, 0);
    header.writeUInt32LE(5000, 12);
    s.write(header);
    await new Promise((r) => s.once('close', r));
    const c = await fx.dom0();
    await assert.rejects(c.request(99 as XsType, Buffer.alloc(0), 0, 'bogus'), (e: XenstoreError) => e.code === 'ENOSYS');
    await assert.rejects(c.request(XsType.READ, Buffer.from('no-nul'), 0, 'read'), (e: XenstoreError) => e.code === 'EINVAL');
    assert.equal(await c.readString('/local/domain/5/domid'), '5');
  });

  it('a closed connection fails pending requests and ends watches with a clear error', async () => {
    fx = await startServer();
    const c = await fx.dom0();
    const w = await c.watch('/z');
    const it = w[Symbol.asyncIterator]();
    await it.next();
    const pending = it.next();
    await fx.server.close();
    await assert.rejects(pending, /xenstore connection .* closed/);
    await assert.rejects(c.read('/z'), /closed/);
    await assert.rejects(XenstoreClient.connect({ socketPath: join(fx.dir, 'absent') }), /no xenstored socket at .*absent/);
    await assert.rejects(XenstoreClient.connectGuest(join(fx.dir, 'no-xenbus')), /no xenbus device at .*no-xenbus/);
  });

  it('guest device path: the same protocol through a file descriptor (a raw pty standing in for /dev/xen/xenbus)', async () => {
    fx = await startServer();
    const pty = join(fx.dir, 'xenbus');
    const socat = spawn('socat', [`PTY,link=${pty},raw,echo=0`, `UNIX-CONNECT:${fx.guestSocket}`], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 200 && !existsSync(pty); i++) await new Promise((r) => setTimeout(r, 10));
      const g = await XenstoreClient.connectGuest(pty);
      try {
        assert.equal(await g.readString('domid'), '5');
        const events = collector();
        await g.watch('data', events.fn);
        await Promise.all(Array.from({ length: 50 }, (_, i) => g.write(`data/d${i}`, `${i}`)));
        assert.equal(fx.server.node('/local/domain/5/data/d49')!.value.toString(), '49');
        await events.until(51);
        assert.equal(events.events[0], 'data');
      } finally {
        g.close();
      }
    } finally {
      socat.kill();
      await new Promise((r) => socat.once('exit', r));
    }
  });
});
