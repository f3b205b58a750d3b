import { strict as assert } from 'node:assert';
import { spawn, execFileSync, ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync, writeFileSync, existsSync, openSync, closeSync, readSync, writeSync, constants as fsConstants } from 'node:fs';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import * as net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { Channel, UnixSocketConnector, SerialConnector, VirtioSerialConnector, connectWithRetry, findVirtioPort, memoryChannelPair } from '@porthole/transport';
import { echoSessionCheck } from '../helpers/echo-session';

function tempDir(): { dir: string; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'porthole-transport-'));
  return { dir, done: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A connected pty pair made by socat (a real serial line stand-in), for the duration of `use`. */
async function withPtyPair(use: (a: string, b: string, dir: string) => Promise<void>): Promise<void> {
  const t = tempDir();
  const a = join(t.dir, 'ttyA');
  const b = join(t.dir, 'ttyB');
  const socat: ChildProcess = spawn('socat', [`pty,raw,echo=0,link=${a}`, `pty,raw,echo=0,link=${b}`], { stdio: 'ignore' });
  try {
    for (let i = 0; i < 100 && !(existsSync(a) && existsSync(b)); i++) await new Promise((r) => setTimeout(r, 50));
    assert.ok(existsSync(a) && existsSync(b), 'socat made the pty pair');
    await use(a, b, t.dir);
  } finally {
    socat.kill();
    t.done();
  }
}

/** The next `length` bytes a channel delivers (copied: a delivered chunk may be a view of a reused slab). */
function receiveAll(channel: Channel, length: number): Promise<Buffer> {
  const received: Buffer[] = [];
  let got = 0;
  return new Promise((resolve) => channel.on('data', (d: Buffer) => {
    received.push(Buffer.from(d));
    if ((got += d.length) >= length) resolve(Buffer.concat(received));
  }));
}

describe('transports', () => {
  it('unix socket: 24 MiB in odd-sized writes arrives intact through slab reads, and the peer sees writes waiting for drain', async () => {
    const t = tempDir();
    const path = join(t.dir, 's.sock');
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(path, r));
    try {
      const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
      const channel = await new UnixSocketConnector(path).connect();
      const peer = await accepted;
      const data = randomBytes(24 * 1024 * 1024);
      const received = createHash('sha256');
      let bytes = 0;
      const done = new Promise<void>((resolve) => channel.on('data', (c) => {
        received.update(c);
        bytes += c.length;
        if (bytes === data.length) resolve();
      }));
      for (let off = 0; off < data.length;) {
        const n = Math.min(data.length - off, 1 + ((off * 7919) % 300_000));
        if (!peer.write(data.subarray(off, off + n))) await new Promise((r) => peer.once('drain', r));
        off += n;
      }
      await done;
      assert.equal(received.digest('hex'), createHash('sha256').update(data).digest('hex'));
      // Writing the other way: write() says "wait" past the high mark and 'drain' lets the writer go on.
      let taken = 0;
      while (channel.write(Buffer.alloc(64 * 1024))) taken++;
      assert.ok(taken < 16, `the channel asks writers to wait (took ${taken} writes first)`);
      peer.resume();
      await new Promise<void>((r) => channel.once('drain', r));
      channel.close();
      peer.destroy();
    } finally {
      server.close();
      t.done();
    }
  });

  it('unix socket: clear errors for a missing socket and a dead listener', async () => {
    const t = tempDir();
    try {
      await assert.rejects(new UnixSocketConnector(join(t.dir, 'nope.sock')).connect(), /no such socket: .*nope\.sock/);
      // A socket file with nobody listening (a VM that was killed): its owner died without unlinking it.
      const path = join(t.dir, 'dead.sock');
      const owner = spawn('socat', [`UNIX-LISTEN:${path}`, '/dev/null'], { stdio: 'ignore' });
      for (let i = 0; i < 100 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 20));
      owner.kill('SIGKILL');
      await new Promise((r) => owner.once('exit', r));
      assert.ok(existsSync(path));
      await assert.rejects(new UnixSocketConnector(path).connect(), /nothing is listening on .*dead\.sock/);
    } finally {
      t.done();
    }
  });

  it('unix socket: connectWithRetry waits for a VM that is still starting, with backoff', async () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'late.sock');
      const retries: number[] = [];
      const server = net.createServer((s) => s.end());
      setTimeout(() => server.listen(path), 300);
      const ch = await connectWithRetry(new UnixSocketConnector(path), { timeoutMs: 5000, onRetry: (_e, _n, d) => retries.push(d) });
      assert.ok(retries.length >= 2, 'retried');
      assert.ok(retries[1] > retries[0], 'backoff grows');
      ch.close();
      server.close();
      await assert.rejects(
        connectWithRetry(new UnixSocketConnector(join(t.dir, 'never.sock')), { timeoutMs: 200 }),
        /gave up after \d+ attempts: no such socket/,
      );
      // A definite answer (a broker daemon that already waited for the VM) ends the attempts at once.
      let attempts = 0;
      const final = { description: 'final', connect: async () => { attempts++; throw Object.assign(new Error('the VM is gone'), { permanent: true }); } };
      await assert.rejects(connectWithRetry(final, { timeoutMs: 5000 }), /^Error: the VM is gone$/);
      assert.equal(attempts, 1);
    } finally {
      t.done();
    }
  });

  it('unix socket: listen mode accepts a peer that connects (QEMU as the socket client) and reconnects', async () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'listen.sock');
      const connector = new UnixSocketConnector(path, { listen: true });
      const accepting = connector.connect();
      await new Promise((r) => setTimeout(r, 50));
      const client = net.connect(path);
      const ch = await accepting;
      const got = new Promise<Buffer>((r) => ch.once('data', r));
      client.write('hi');
      assert.equal((await got).toString(), 'hi');
      const closed = new Promise((r) => ch.once('close', r));
      client.destroy();
      await closed;
      // The next peer connection is handed out by the next connect().
      const again = connector.connect();
      const client2 = net.connect(path);
      const ch2 = await again;
      assert.equal(ch2.closed, false);
      client2.destroy();
      connector.close();
    } finally {
      t.done();
    }
  });

  it('serial tty: a session over a real pty pair (socat)', async function () {
    this.timeout(20000);
    await withPtyPair(async (a, b, dir) => {
      const host = await new SerialConnector(a).connect();
      const guest = await new SerialConnector(b).connect();
      await echoSessionCheck(host, guest, { bytes: 256 * 1024, chunk: 4096 });
      await assert.rejects(new SerialConnector(join(dir, 'ttyNone')).connect(), /cannot open serial port .*ttyNone/);
    });
  });

  it('serial tty: data still arrives while a write waits for room, and the write resumes (serialport poller keeps both interests)', async function () {
    this.timeout(20000);
    await withPtyPair(async (a, b) => {
      const guest = await new SerialConnector(b).connect();
      // XOFF from the peer stops the guest's output in the tty itself, so the write waits for room
      // while socat stays free to pass bytes the other way.
      execFileSync('stty', ['-F', b, 'ixon']);
      const peer = openSync(a, fsConstants.O_RDWR | fsConstants.O_NOCTTY | fsConstants.O_NONBLOCK);
      try {
        writeSync(peer, Buffer.from([0x13]));
        await new Promise((r) => setTimeout(r, 100));
        const data = randomBytes(1024 * 1024);
        assert.equal(guest.write(data), false, 'the write has to wait');
        await new Promise((r) => setTimeout(r, 200));
        const gotByte = new Promise<Buffer>((r) => guest.once('data', r));
        writeSync(peer, Buffer.from('x'));
        const got = await Promise.race([gotByte, new Promise<undefined>((r) => setTimeout(() => r(undefined), 2000))]);
        assert.equal(got?.toString(), 'x', 'a byte sent while the write waits reaches the reader');
        writeSync(peer, Buffer.from([0x11]));
        const received = createHash('sha256');
        const buf = Buffer.alloc(64 * 1024);
        let bytes = 0;
        for (const deadline = Date.now() + 10_000; bytes < data.length && Date.now() < deadline;) {
          try {
            const n = readSync(peer, buf, 0, buf.length, null);
            received.update(buf.subarray(0, n));
            bytes += n;
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
            await new Promise((r) => setTimeout(r, 5));
          }
        }
        assert.equal(bytes, data.length, `the write stalled after ${bytes} of ${data.length} bytes`);
        assert.equal(received.digest('hex'), createHash('sha256').update(data).digest('hex'));
      } finally {
        closeSync(peer);
        guest.close();
      }
    });
  });

  it('virtio-serial channel: a session over a character device (a pty from socat), frames written in parts arrive whole and in order', async function () {
    this.timeout(20000);
    await withPtyPair(async (a, b) => {
      const host = await new SerialConnector(a).connect();
      const guest = await new VirtioSerialConnector({ path: b }).connect();
      assert.equal(guest.description, `virtio-serial:${b}`);
      // Many frames queued at once: they leave in batched writevs, which must keep their order.
      await echoSessionCheck(host, guest, { bytes: 1024 * 1024, chunk: 4096 });
      assert.equal(guest.closed, true);
    });
  });

  it('virtio-serial channel: frames over 64 KiB (written as a joined head and their data) arrive whole', async function () {
    this.timeout(30000);
    await withPtyPair(async (a, b) => {
      const host = await new SerialConnector(a).connect();
      const guest = await new VirtioSerialConnector({ path: b }).connect();
      await echoSessionCheck(host, guest, { bytes: 2 * 1024 * 1024, chunk: 192 * 1024 });
    });
  });

  it('virtio-serial and unix socket channels: `written` comes once a large write left, so its buffer can be filled again', async function () {
    this.timeout(30000);
    const check = async (writer: Channel, reader: Channel) => {
      const frames = Array.from({ length: 24 }, () => randomBytes(200 * 1024));
      const expected = Buffer.concat(frames);
      const all = receiveAll(reader, expected.length);
      let written = 0;
      for (const frame of frames) {
        // The writer's buffer is overwritten as soon as it is said to be written: bytes still held would change.
        const copy = Buffer.from(frame);
        const ok = writer.writeParts!([copy.subarray(0, 10), copy.subarray(10)], () => { written++; copy.fill(0xee); });
        if (!ok) await new Promise<void>((r) => writer.once('drain', () => r()));
      }
      assert.ok((await all).equals(expected), 'what arrived is what was written');
      assert.equal(written, frames.length, 'every write said it was written');
    };
    await withPtyPair(async (a, b) => {
      const host = await new SerialConnector(a).connect();
      const guest = await new VirtioSerialConnector({ path: b }).connect();
      try {
        await check(guest, host);
      } finally {
        host.close();
        guest.close();
      }
    });
    const sock = join(mkdtempSync(join(tmpdir(), 'porthole-written-')), 's');
    const listener = new UnixSocketConnector(sock, { listen: true });
    const accepted = listener.connect();
    const client = await new UnixSocketConnector(sock).connect();
    const server = await accepted;
    try {
      await check(client, server);
    } finally {
      client.close();
      server.close();
    }
  });

  it('virtio-serial channel: small writes of one run of JavaScript and its promises, gathered into one write, keep their order around a large one', async function () {
    this.timeout(20000);
    await withPtyPair(async (a, b) => {
      const host = await new SerialConnector(a).connect();
      const guest = await new VirtioSerialConnector({ path: b }).connect();
      try {
        const parts = [Buffer.from('small-1;'), Buffer.from('small-2;'), randomBytes(100 * 1024), Buffer.from('small-3;'), Buffer.from('small-4')];
        const expected = Buffer.concat(parts);
        const all = receiveAll(host, expected.length);
        assert.ok(guest.writeParts, 'the virtio channel takes frames in parts');
        guest.writeParts([parts[0]]);
        guest.write(parts[1]);
        guest.writeParts([parts[2].subarray(0, 1000), parts[2].subarray(1000)]);
        guest.writeParts([parts[3], parts[4]]);
        assert.ok((await all).equals(expected));
        // Small frames written from promises that follow one another still leave in one write
        // (straight to the port's fd when nothing is queued, else through its socket).
        const { socket, fd } = guest as unknown as { socket: { write: (...args: unknown[]) => boolean }; fd: number };
        const fs = createRequire(__filename)('node:fs') as { writeSync: (...args: unknown[]) => number };
        const write = socket.write;
        const fsWrite = fs.writeSync;
        let writes = 0;
        socket.write = (...args: unknown[]) => { writes++; return write.apply(socket, args); };
        fs.writeSync = (...args: unknown[]) => { if (args[0] === fd) writes++; return fsWrite(...args); };
        try {
          const later = receiveAll(host, 10);
          guest.write(Buffer.from('a;'));
          void Promise.resolve().then(() => guest.write(Buffer.from('b;'))).then(() => guest.write(Buffer.from('c;')));
          await Promise.resolve().then(() => guest.write(Buffer.from('d;e;')));
          assert.equal((await later).toString(), 'a;b;d;e;c;');
          assert.equal(writes, 1, 'one write for the run and the promises it settled');
        } finally {
          fs.writeSync = fsWrite;
        }
      } finally {
        host.close();
        guest.close();
      }
    });
  });

  it('virtio-serial: finds a port by name in sysfs when udev made no symlink', () => {
    const t = tempDir();
    try {
      const sys = join(t.dir, 'sys');
      mkdirSync(join(sys, 'vport1p1'), { recursive: true });
      mkdirSync(join(sys, 'vport1p2'), { recursive: true });
      writeFileSync(join(sys, 'vport1p1', 'name'), 'org.qemu.guest_agent.0\n');
      writeFileSync(join(sys, 'vport1p2', 'name'), 'org.porthole.agent.0\n');
      assert.equal(findVirtioPort('org.porthole.agent.0', { dev: join(t.dir, 'dev'), sys }), join(t.dir, 'dev', 'vport1p2'));
      assert.throws(() => findVirtioPort('other', { dev: join(t.dir, 'dev'), sys }), /no virtio-serial port named other \(ports here: org\.qemu\.guest_agent\.0, org\.porthole\.agent\.0\)/);
      mkdirSync(join(t.dir, 'dev', 'virtio-ports'), { recursive: true });
      writeFileSync(join(t.dir, 'dev', 'virtio-ports', 'other'), '');
      assert.equal(findVirtioPort('other', { dev: join(t.dir, 'dev'), sys }), join(t.dir, 'dev', 'virtio-ports', 'other'));
      assert.throws(() => findVirtioPort('x', { dev: join(t.dir, 'dev'), sys: join(t.dir, 'nosys') }), /is virtio_console loaded/);
    } finally {
      t.done();
    }
  });
});

describe('in-process channel pair', () => {
  it('carries whole packets in order and closes the far end after what was written before the close', async () => {
    const [near, far] = memoryChannelPair('test');
    assert.equal(near.kind, 'packets');
    const got: string[] = [];
    far.on('data', (p: Buffer) => got.push(p.toString()));
    const closed = new Promise<void>((resolve) => far.once('close', () => resolve()));
    for (let i = 0; i < 100; i++) near.write(Buffer.from(`packet ${i}`));
    near.close();
    await closed;
    assert.deepEqual(got, Array.from({ length: 100 }, (_, i) => `packet ${i}`));
    assert.ok(far.closed && near.closed);
    assert.equal(far.write(Buffer.from('late')), false);
  });

  it('asks a writer to wait past 1 MiB queued and says when to go on', async () => {
    const [near, far] = memoryChannelPair('test');
    far.on('data', () => undefined);
    assert.equal(near.write(Buffer.alloc(512 * 1024)), true);
    assert.equal(near.write(Buffer.alloc(512 * 1024)), false);
    await new Promise<void>((resolve) => near.once('drain', () => resolve()));
    near.close();
  });
});
