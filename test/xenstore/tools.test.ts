// The real Xen client tools (xenstore-utils, libxenstore) against the test server:
// if they work byte for byte, the server speaks the wire protocol as xenstored does.
import { strict as assert } from 'node:assert';
import { execFile, spawn } from 'node:child_process';
import { Fixture, startServer } from './server-fixture';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function tool(socket: string, name: string, ...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(name, ['-s', ...args], { env: { ...process.env, XENSTORED_PATH: socket }, timeout: 10000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('xenstore test server with the real Xen tools', function () {
  this.timeout(30000);
  let fx: Fixture;
  const dom0 = (name: string, ...args: string[]) => tool(fx.socket, name, ...args);
  const guest = (name: string, ...args: string[]) => tool(fx.guestSocket, name, ...args);

  beforeEach(async () => {
    fx = await startServer();
  });
  afterEach(async () => {
    await fx.cleanup();
  });

  it('xenstore-write / -read / -exists / -list / -rm', async () => {
    assert.deepEqual(await dom0('xenstore-write', '/a/b', 'v', '/a/c', 'hello world'), { code: 0, stdout: '', stderr: '' });
    assert.deepEqual(await dom0('xenstore-read', '/a/b', '/a/c'), { code: 0, stdout: 'v\nhello world\n', stderr: '' });
    assert.equal((await dom0('xenstore-read', '-p', '/a/b')).stdout, '/a/b: v\n');
    assert.equal((await dom0('xenstore-list', '/a')).stdout, 'b\nc\n');
    assert.equal((await dom0('xenstore-exists', '/a/b')).code, 0);
    assert.equal((await dom0('xenstore-exists', '/a/zz')).code, 1);
    const missing = await dom0('xenstore-read', '/a/zz');
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /couldn't read path \/a\/zz/);
    assert.equal((await dom0('xenstore-rm', '/a/b')).code, 0);
    assert.equal((await dom0('xenstore-list', '/a')).stdout, 'c\n');
    // rm of a missing node is fine while its parent exists, an error when not.
    assert.equal((await dom0('xenstore-rm', '/a/nothing')).code, 0);
    const orphan = await dom0('xenstore-rm', '/no/such/parent');
    assert.equal(orphan.code, 1);
    assert.match(orphan.stderr, /could not remove path \/no\/such\/parent/);
    // The server's own tree matches what the tools wrote.
    assert.equal(fx.server.node('/a/c')!.value.toString(), 'hello world');
  });

  it('xenstore-ls prints the tree as xenstored would have it (initial nodes, a guest, values)', async () => {
    await dom0('xenstore-write', '/vm/x', '1', '/vm/y/z', 'deep');
    const ls = await dom0('xenstore-ls', '/');
    assert.equal(ls.code, 0);
    assert.equal(
      ls.stdout,
      [
        'tool = ""',
        ' xenstored = ""',
        'local = ""',
        ' domain = ""',
        '  5 = ""',
        '   domid = "5"',
        '   name = "guest5"',
        '   data = ""',
        'vm = ""',
        ' x = "1"',
        ' y = ""',
        '  z = "deep"',
        '',
      ].join('\n'),
    );
    assert.equal((await dom0('xenstore-ls', '-f', '/vm')).stdout, '/vm/x = "1"\n/vm/y = ""\n/vm/y/z = "deep"\n');
    const perms = (await dom0('xenstore-ls', '-p', '/local/domain/5')).stdout.split('\n');
    assert.match(perms[0], /^domid = "5" [ .]+\(n0,r5\)$/);
    assert.match(perms[2], /^data = "" [ .]+\(n5\)$/);
  });

  it('xenstore-chmod sets owner and ACL; a guest sees only what it may', async () => {
    await dom0('xenstore-write', '/shared/ro', 'r', '/shared/secret', 's', '/shared/rw', 'w');
    assert.equal((await dom0('xenstore-chmod', '/shared', 'n0', 'r5')).code, 0);
    assert.equal((await dom0('xenstore-chmod', '/shared/ro', 'n0', 'r5')).code, 0);
    assert.equal((await dom0('xenstore-chmod', '/shared/rw', 'n0', 'b5')).code, 0);
    assert.match((await dom0('xenstore-ls', '-p', '/shared')).stdout, /^ro = "r" [ .]+\(n0,r5\)\nsecret = "s" [ .]+\(n0\)\nrw = "w" [ .]+\(n0,b5\)\n$/);

    assert.equal((await guest('xenstore-read', '/shared/ro')).stdout, 'r\n');
    const secret = await guest('xenstore-read', '/shared/secret');
    assert.equal(secret.code, 1);
    assert.match(secret.stderr, /couldn't read path/);
    assert.equal((await guest('xenstore-write', '/shared/rw', 'changed')).code, 0);
    assert.equal((await guest('xenstore-write', '/shared/ro', 'no')).code, 1);
    assert.equal((await dom0('xenstore-read', '/shared/rw')).stdout, 'changed\n');
    assert.equal((await dom0('xenstore-read', '/shared/ro')).stdout, 'r\n');
  });

  it('a guest connection uses relative paths under /local/domain/<domid> and owns what it creates', async () => {
    assert.equal((await guest('xenstore-read', 'domid')).stdout, '5\n');
    assert.equal((await guest('xenstore-write', 'data/hello', 'from guest')).code, 0);
    assert.equal((await dom0('xenstore-read', '/local/domain/5/data/hello')).stdout, 'from guest\n');
    assert.match((await dom0('xenstore-ls', '-p', '/local/domain/5/data')).stdout, /^hello = "from guest" [ .]+\(n5\)\n$/);
    // Its own domain directory belongs to dom0: read-only for the guest.
    assert.equal((await guest('xenstore-write', 'name', 'renamed')).code, 1);
    assert.equal((await guest('xenstore-write', '/local/domain/6/x', 'y')).code, 1);
  });

  it('a value over the guest node size limit is refused; dom0 is not limited', async () => {
    const big = 'x'.repeat(2100);
    const refused = await guest('xenstore-write', 'data/big', big);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /could not write path data\/big/);
    assert.equal((await dom0('xenstore-write', '/local/domain/5/data/big', big)).code, 0);
    assert.equal((await dom0('xenstore-read', '/local/domain/5/data/big')).stdout, `${big}\n`);
  });

  it('a listing longer than one reply comes through DIRECTORY_PART (libxenstore falls back on E2BIG)', async () => {
    const args: string[] = [];
    const names: string[] = [];
    for (let i = 0; i < 300; i++) {
      names.push(`child-with-a-long-name-${i}`);
      args.push(`/wide/child-with-a-long-name-${i}`, String(i));
    }
    for (let i = 0; i < args.length; i += 100) assert.equal((await dom0('xenstore-write', ...args.slice(i, i + 100))).code, 0);
    assert.ok(names.join('\0').length > 4096);
    assert.equal((await dom0('xenstore-list', '/wide')).stdout, names.map((n) => `${n}\n`).join(''));
  });

  it('xenstore-watch: the event on registration, then changes of the node and its descendants, and removal', async () => {
    await dom0('xenstore-write', '/w/a', '1');
    const child = spawn('xenstore-watch', ['-s', '-n', '4', '/w'], { env: { ...process.env, XENSTORED_PATH: fx.socket } });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    try {
      for (let i = 0; i < 100 && !out.includes('/w\n'); i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(out, '/w\n');
      await dom0('xenstore-write', '/w/a', '2');
      await dom0('xenstore-write', '/elsewhere', 'not seen');
      await dom0('xenstore-write', '/w/b/c', '3');
      await dom0('xenstore-rm', '/w/a');
      assert.equal(await exited, 0);
      assert.equal(out, '/w\n/w/a\n/w/b/c\n/w/a\n');
    } finally {
      child.kill();
    }
  });

  it('xenstore-watch as a guest gets relative paths for a relative watch', async () => {
    const child = spawn('xenstore-watch', ['-s', '-n', '2', 'data'], { env: { ...process.env, XENSTORED_PATH: fx.guestSocket } });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    try {
      for (let i = 0; i < 100 && !out; i++) await new Promise((r) => setTimeout(r, 20));
      await dom0('xenstore-write', '/local/domain/5/data/k', 'v');
      assert.equal(await exited, 0);
      assert.equal(out, 'data\ndata/k\n');
    } finally {
      child.kill();
    }
  });
});
