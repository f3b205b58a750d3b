import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, renameSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { v1, PortholeError, MAX_CHUNK_SIZE } from '@porthole/protocol';
import { AgentConfig, TransferStore } from '@porthole/agent';
import { AgentHarness, TRANSPORTS, startAgentHarness } from './harness';
import { readFile, sha256, transferStatus, writeFile } from './client';

const E = v1.ErrorCode;
const b = (s: string) => Buffer.from(s);
const code = (c: v1.ErrorCode) => (e: PortholeError) => {
  assert.equal(e.codeName, v1.ErrorCode[c].replace('ERROR_CODE_', ''), `${e.codeName}: ${e.message}`);
  return true;
};
/** Files in a directory that are not the named ones (left-over temporaries). */
const extras = (dir: string, ...expected: string[]) => readdirSync(dir).filter((n) => !expected.includes(n));

for (const transport of TRANSPORTS) describe(`agent: file write and read over ${transport.name}`, function () {
  this.timeout(30000);
  let h: AgentHarness;
  beforeEach(async () => {
    h = await startAgentHarness(undefined, transport.link);
  });
  afterEach(async () => h.cleanup());

  it('takes a file in the largest messages its window allows, hashing each in pieces between event-loop turns', async () => {
    const probe = h.session.openStream({ info: {} });
    assert.equal(probe.chunkSize, 512 * 1024); // what the host sends an agent on a reliable channel
    probe.end();
    const content = randomBytes(3 * 512 * 1024 + 99_999);
    const path = join(h.root, 'large-messages.bin');
    const result = await writeFile(h.session, { path: b(path) }, content);
    assert.equal(result.sha256, sha256(content));
    assert.ok(readFileSync(path).equals(content));
  });

  it('writes content with owner, group, mode and sha256, creating parents', async () => {
    const content = randomBytes(1024 * 1024 + 17);
    const path = join(h.root, 'a/b/c.bin');
    const result = await writeFile(h.session, {
      path: b(path), owner: { name: 'nobody' }, group: { numeric: 4242 }, mode: 0o640, hasMode: true,
      mkdirParents: true, parentMode: 0o711, hasParentMode: true, parentOwner: { numeric: 1234 },
    }, content, { chunkSize: 64 * 1024 });
    assert.equal(result.sha256, sha256(content));
    assert.equal(Number(result.size), content.length);
    assert.deepEqual([result.uid, result.gid, result.mode], [65534, 4242, 0o640]);
    const st = statSync(path);
    assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [65534, 4242, 0o640]);
    assert.ok(readFileSync(path).equals(content));
    const parent = statSync(join(h.root, 'a/b'));
    assert.deepEqual([parent.mode & 0o7777, parent.uid], [0o711, 1234]);
    assert.deepEqual(extras(join(h.root, 'a/b'), 'c.bin'), [], 'no temporary left');
    const line = h.audit.find((l) => l.request === 'fileWrite' && l.result === 'ok');
    assert.ok(line, 'an audit line');
    assert.equal(line.path, path);
    assert.equal(line.sha256, sha256(content));
    assert.equal(line.mode, '0640');
    assert.ok(!JSON.stringify(h.audit).includes(content.subarray(0, 16).toString('base64')), 'no content in the log');
  });

  it('keeps non-UTF-8 path bytes exact', async () => {
    const name = Buffer.concat([b(`${h.root}/caf`), Buffer.from([0xe9, 0xff]), b('.txt')]);
    await writeFile(h.session, { path: name }, b('bytes'));
    const names = readdirSync(b(h.root) as unknown as string, { encoding: 'buffer' }) as Buffer[];
    assert.ok(names.some((n) => n.equals(Buffer.concat([b('caf'), Buffer.from([0xe9, 0xff]), b('.txt')]))));
    const back = await readFile(h.session, { path: name });
    assert.ok(Buffer.from(back.header.path).equals(name));
    assert.equal(back.data.toString(), 'bytes');
  });

  it('replaces atomically: readers see the old file until the new one is complete', async () => {
    const path = join(h.root, 'atomic.txt');
    writeFileSync(path, 'old content');
    const content = randomBytes(512 * 1024);
    const seen: string[] = [];
    await writeFile(h.session, { path: b(path) }, content, {
      chunkSize: 64 * 1024,
      afterChunk: (sent) => { if (sent < content.length) seen.push(readFileSync(path, 'utf8')); },
    });
    assert.ok(seen.length >= 7 && seen.every((s) => s === 'old content'));
    assert.ok(readFileSync(path).equals(content));
  });

  it('refuses content whose sha256 does not match and keeps the old file', async () => {
    const path = join(h.root, 'verified.txt');
    writeFileSync(path, 'keep me');
    await assert.rejects(writeFile(h.session, { path: b(path) }, b('new'), { sha256: sha256(b('other')) }), code(E.ERROR_CODE_CHECKSUM_MISMATCH));
    assert.equal(readFileSync(path, 'utf8'), 'keep me');
    assert.deepEqual(extras(h.root, 'verified.txt'), []);
  });

  it('fails if the file exists when asked to, appends when asked to', async () => {
    const path = join(h.root, 'once.txt');
    writeFileSync(path, 'first;');
    await assert.rejects(writeFile(h.session, { path: b(path), overwrite: v1.OverwritePolicy.OVERWRITE_FAIL_IF_EXISTS }, b('x')), code(E.ERROR_CODE_ALREADY_EXISTS));
    const r = await writeFile(h.session, { path: b(path), overwrite: v1.OverwritePolicy.OVERWRITE_APPEND }, b('second'), { sha256: sha256(b('first;second')) });
    assert.equal(readFileSync(path, 'utf8'), 'first;second');
    assert.equal(r.sha256, sha256(b('first;second')));
  });

  it('answers a retried write with the earlier result (idempotent request id)', async () => {
    const path = join(h.root, 'idem.txt');
    const requestId = randomUUID();
    const first = await writeFile(h.session, { path: b(path) }, b('v1'), { requestId });
    writeFileSync(path, 'changed since');
    const again = await writeFile(h.session, { path: b(path) }, b('v1'), { requestId });
    assert.equal(again.sha256, first.sha256);
    assert.equal(readFileSync(path, 'utf8'), 'changed since', 'the retry did not write again');
    const status = await transferStatus(h.session, requestId, b(path));
    assert.equal(status.found, true);
    assert.equal(status.completed?.sha256, first.sha256);
  });

  it('cut transfer: the target keeps its old content; after reconnecting the write resumes', async () => {
    const path = join(h.root, 'big.bin');
    writeFileSync(path, 'old');
    const content = randomBytes(3 * 1024 * 1024);
    const requestId = randomUUID();
    const half = 1024 * 1024 + 5;
    const cut = writeFile(h.session, { path: b(path), size: content.length, sizeKnown: true }, content.subarray(0, half), {
      requestId, chunkSize: 100_000, sha256: sha256(content),
      afterChunk: async (sent) => {
        if (sent < half) return;
        // Wait until the agent holds everything sent, then pull the plug.
        const part = () => readdirSync(h.root).find((n) => n.endsWith('.part'));
        for (let i = 0; i < 200 && !(part() && statSync(join(h.root, part()!)).size === half); i++) await new Promise((r) => setTimeout(r, 10));
        h.session.close();
      },
    });
    await assert.rejects(cut);
    assert.equal(readFileSync(path, 'utf8'), 'old', 'no partial file at the target');

    const session = await h.reconnect();
    const status = await transferStatus(session, requestId, b(path));
    assert.equal(status.found, true);
    assert.equal(Number(status.offset), half);
    const result = await writeFile(session, { path: b(path), size: content.length, sizeKnown: true, resumeOffset: status.offset }, content, {
      requestId, from: Number(status.offset),
    });
    assert.equal(result.sha256, sha256(content));
    assert.ok(readFileSync(path).equals(content));
    assert.deepEqual(extras(h.root, 'big.bin'), [], 'the temporary is gone');
    assert.equal(h.audit.find((l) => l.result === 'ok' && l.request === 'fileWrite')?.resumedFrom, half);
    assert.equal((await transferStatus(session, randomUUID(), b(path))).found, false);
  });

  it('sweeps abandoned temporaries', async () => {
    const path = join(h.root, 'abandoned.bin');
    const cut = writeFile(h.session, { path: b(path) }, randomBytes(300_000), {
      chunkSize: 100_000, sha256: '0'.repeat(64),
      afterChunk: async (sent) => {
        if (sent < 200_000) return;
        // Once the agent holds the bytes: a temporary without any is no use for a resume and goes at once.
        const part = () => extras(h.root).find((n) => n.endsWith('.part'));
        for (let i = 0; i < 200 && !(part() && statSync(join(h.root, part()!)).size === 200_000); i++) await new Promise((r) => setTimeout(r, 10));
        h.session.close();
      },
    });
    await assert.rejects(cut);
    await h.reconnect();
    assert.equal(extras(h.root).length, 1, 'a temporary is held for a resume');
    const store = new TransferStore(h.config.transfers.stateDir, 60_000);
    assert.equal(store.sweep(Date.now()), 0, 'not yet abandoned');
    assert.equal(store.sweep(Date.now() + 61_000), 1);
    assert.deepEqual(extras(h.root), []);
  });

  it('names the cause: missing user, missing group, missing parent, directory in the way, file in the way', async () => {
    const p = (n: string) => b(join(h.root, n));
    await assert.rejects(writeFile(h.session, { path: p('u'), owner: { name: 'no-such-user-x' } }, b('x')), (e: PortholeError) =>
      code(E.ERROR_CODE_NO_SUCH_USER)(e) && /no-such-user-x/.test(e.message));
    await assert.rejects(writeFile(h.session, { path: p('g'), group: { name: 'no-such-group-x' } }, b('x')), (e: PortholeError) =>
      code(E.ERROR_CODE_NO_SUCH_GROUP)(e) && /no-such-group-x/.test(e.message));
    await assert.rejects(writeFile(h.session, { path: p('missing/f') }, b('x')), (e: PortholeError) =>
      code(E.ERROR_CODE_NOT_FOUND)(e) && /missing.*does not exist/.test(e.message));
    mkdirSync(join(h.root, 'adir'));
    await assert.rejects(writeFile(h.session, { path: p('adir') }, b('x')), code(E.ERROR_CODE_IS_A_DIRECTORY));
    writeFileSync(join(h.root, 'afile'), '');
    await assert.rejects(writeFile(h.session, { path: p('afile/below'), mkdirParents: true }, b('x')), (e: PortholeError) =>
      code(E.ERROR_CODE_NOT_A_DIRECTORY)(e) && /afile is a file/.test(e.message));
    await assert.rejects(writeFile(h.session, { path: b('relative/path') }, b('x')), code(E.ERROR_CODE_INVALID_ARGUMENT));
    assert.deepEqual(extras(h.root, 'adir', 'afile'), []);
  });

  it('reports a full disk and a read-only file system, leaving nothing behind', async () => {
    const mnt = join(h.dir, 'small');
    mkdirSync(mnt);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt]);
    try {
      writeFileSync(join(mnt, 'kept'), 'old');
      await assert.rejects(writeFile(h.session, { path: b(join(mnt, 'kept')) }, randomBytes(2 * 1024 * 1024)), (e: PortholeError) =>
        code(E.ERROR_CODE_DISK_FULL)(e) && /no space/i.test(e.message));
      assert.equal(readFileSync(join(mnt, 'kept'), 'utf8'), 'old');
      assert.deepEqual(readdirSync(mnt), ['kept'], 'the partial temporary was removed');
      execFileSync('mount', ['-o', 'remount,ro', mnt]);
      await assert.rejects(writeFile(h.session, { path: b(join(mnt, 'kept')) }, b('new')), (e: PortholeError) =>
        code(E.ERROR_CODE_READ_ONLY_FS)(e) && /read-only/i.test(e.message));
      assert.equal(readFileSync(join(mnt, 'kept'), 'utf8'), 'old');
    } finally {
      execFileSync('umount', [mnt]);
    }
  });

  it('answers malformed requests with typed errors and keeps serving', async () => {
    const refused = async (open: v1.Open.$Properties, send: v1.StreamMessage.$Properties[] = []) => {
      const stream = h.session.openStream(open);
      for (const m of send) await stream.send(m).catch(() => undefined);
      stream.end();
      try {
        while ((await stream.read()) !== null);
      } catch (err) {
        return (err as PortholeError).codeName;
      }
      return 'answered';
    };
    assert.equal(await refused({}), 'UNSUPPORTED');
    assert.equal(await refused({ fileWrite: {} }), 'INVALID_ARGUMENT');
    assert.equal(await refused({ fileRead: {} }), 'INVALID_ARGUMENT');
    assert.equal(await refused({ exec: {} }), 'INVALID_ARGUMENT');
    assert.equal(await refused({ fileWrite: { path: b(join(h.root, 'x')) } }, [{ chunk: { offset: 5, data: b('gap') } }]), 'INVALID_ARGUMENT');
    assert.equal(await refused({ fileWrite: { path: b(join(h.root, 'y')), size: 10, sizeKnown: true } }, [{ chunk: { offset: 0, data: b('short') } }]), 'INVALID_ARGUMENT');
    assert.equal(await refused({ fileWrite: { path: b(join(h.root, 'z')), resumeOffset: 10 } }), 'INVALID_ARGUMENT');
    assert.deepEqual(readdirSync(h.root), []);
    assert.equal((await writeFile(h.session, { path: b(join(h.root, 'ok')) }, b('fine'))).size, 4);
  });

  it('concurrent writes with mkdir into the same new directories all succeed', async () => {
    for (let round = 0; round < 3; round++) {
      const dir = join(h.root, `new${round}/a/b`);
      const results = await Promise.allSettled(Array.from({ length: 30 }, (_, i) =>
        writeFile(h.session, { path: b(join(dir, `f${i}`)), mkdirParents: true }, b(`content ${i}`))));
      const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      assert.deepEqual(failed.map((r) => (r.reason as Error).message), [], `round ${round}`);
      assert.equal(readdirSync(dir).length, 30);
    }
  });

  it('setuid and setgid bits survive the owner change; the result reports the mode read back', async () => {
    const path = join(h.root, 'suid');
    const r = await writeFile(h.session, { path: b(path), owner: { name: 'nobody' }, group: { numeric: 4242 }, mode: 0o6755, hasMode: true }, b('#!/bin/sh\n'));
    assert.equal(statSync(path).mode & 0o7777, 0o6755);
    assert.equal(r.mode, 0o6755);
    const line = h.audit.find((l) => l.request === 'fileWrite' && l.result === 'ok');
    assert.equal(line?.mode, '06755');
  });

  it('reads a file or a range with its metadata and sha256', async () => {
    const content = randomBytes(400_000);
    const path = join(h.root, 'r.bin');
    writeFileSync(path, content, { mode: 0o604 });
    const whole = await readFile(h.session, { path: b(path) });
    assert.ok(whole.data.equals(content));
    assert.equal(whole.result.sha256, sha256(content));
    assert.deepEqual([Number(whole.header.size), whole.header.mode, whole.header.owner], [content.length, 0o604, 'root']);
    const range = await readFile(h.session, { path: b(path), offset: 1000, length: 5000 });
    assert.ok(range.data.equals(content.subarray(1000, 6000)));
    assert.equal(range.result.sha256, sha256(content.subarray(1000, 6000)));
    // Past the agent's read size (1 MiB per file read): chunks of the stream's size (1 MiB to a host granting the
    // default window), each at its own offset, in order.
    const big = randomBytes(2 * 1024 * 1024 + 300_077);
    writeFileSync(join(h.root, 'big.bin'), big);
    const from = 12_345;
    const part = await readFile(h.session, { path: b(join(h.root, 'big.bin')), offset: from, length: big.length - from - 10 });
    assert.ok(part.data.equals(big.subarray(from, big.length - 10)));
    assert.equal(part.result.sha256, sha256(big.subarray(from, big.length - 10)));
    let at = from;
    for (const [i, c] of part.chunks.entries()) {
      assert.equal(c.offset, at);
      if (i < part.chunks.length - 1) assert.equal(c.length, MAX_CHUNK_SIZE, `chunk ${i} has ${c.length} bytes`);
      at += c.length;
    }
    assert.equal(at, big.length - 10);
    await assert.rejects(readFile(h.session, { path: b(join(h.root, 'nope')) }), code(E.ERROR_CODE_NOT_FOUND));
    await assert.rejects(readFile(h.session, { path: b(path), offset: content.length + 1 }), code(E.ERROR_CODE_INVALID_ARGUMENT));
  });

  it('reads a long file into the same few buffers, each filled again only once the channel wrote it out', async () => {
    const content = randomBytes(12 * MAX_CHUNK_SIZE + 4321);
    const path = join(h.root, 'long.bin');
    writeFileSync(path, content);
    // The agent runs in this process: count the piece-sized buffers it takes.
    const allocUnsafe = Buffer.allocUnsafe;
    let fresh = 0;
    Buffer.allocUnsafe = (size: number) => {
      if (size === MAX_CHUNK_SIZE) fresh++;
      return allocUnsafe(size);
    };
    try {
      const r = await readFile(h.session, { path: b(path) });
      // A buffer refilled before its bytes left would change what arrives.
      assert.ok(r.data.equals(content));
      assert.equal(r.result.sha256, sha256(content));
    } finally {
      Buffer.allocUnsafe = allocUnsafe;
    }
    assert.ok(fresh <= 5, `${fresh} fresh buffers for 13 pieces`);
  });
});

describe('agent: path safety and owner policy for files', function () {
  this.timeout(30000);
  let h: AgentHarness;
  let outside: string;
  afterEach(async () => h.cleanup());

  async function start(tune: (c: AgentConfig, root: string) => void) {
    h = await startAgentHarness((c, root) => {
      c.fileWrite.allow = [join(root, 'allowed')];
      c.fileRead.allow = [join(root, 'allowed')];
      tune(c, root);
    });
    mkdirSync(join(h.root, 'allowed'));
    outside = join(h.root, 'outside');
    mkdirSync(outside);
    writeFileSync(join(outside, 'secret'), 'outside');
  }

  it('refuses `..`, paths outside the prefixes and denied prefixes, naming the rule', async () => {
    await start((c, root) => { c.fileWrite.deny = [join(root, 'allowed/locked')]; });
    const allowed = join(h.root, 'allowed');
    await assert.rejects(writeFile(h.session, { path: b(`${allowed}/../outside/x`) }, b('x')), (e: PortholeError) =>
      code(E.ERROR_CODE_INVALID_ARGUMENT)(e) && /\.\./.test(e.message));
    await assert.rejects(writeFile(h.session, { path: b(join(outside, 'x')) }, b('x')), (e: PortholeError) =>
      code(E.ERROR_CODE_POLICY_DENIED)(e) && e.rule === `file_write.allow = [${allowed}]`);
    await assert.rejects(writeFile(h.session, { path: b(join(allowed, 'locked/x')), mkdirParents: true }, b('x')), (e: PortholeError) =>
      code(E.ERROR_CODE_POLICY_DENIED)(e) && e.rule === `file_write.deny contains ${allowed}/locked`);
    await assert.rejects(readFile(h.session, { path: b(join(outside, 'secret')) }), code(E.ERROR_CODE_POLICY_DENIED));
    assert.deepEqual(readdirSync(outside), ['secret']);
    assert.ok(!existsSync(join(allowed, 'locked')));
  });

  it('does not follow a directory symlink out of the prefix, not even to create parents', async () => {
    await start(() => undefined);
    symlinkSync(outside, join(h.root, 'allowed/link'));
    await assert.rejects(writeFile(h.session, { path: b(join(h.root, 'allowed/link/x')) }, b('x')), (e: PortholeError) =>
      code(E.ERROR_CODE_POLICY_DENIED)(e) && /escapes through a symbolic link/.test(e.message));
    await assert.rejects(writeFile(h.session, { path: b(join(h.root, 'allowed/link/new/x')), mkdirParents: true }, b('x')), code(E.ERROR_CODE_POLICY_DENIED));
    assert.deepEqual(readdirSync(outside), ['secret'], 'nothing was created outside');
    await assert.rejects(readFile(h.session, { path: b(join(h.root, 'allowed/link/secret')) }), code(E.ERROR_CODE_POLICY_DENIED));
  });

  it('refuses a final symlink by default; with allow_final_symlink writes through it, still inside the prefixes', async () => {
    await start(() => undefined);
    const allowed = join(h.root, 'allowed');
    writeFileSync(join(allowed, 'real.conf'), 'old');
    symlinkSync('real.conf', join(allowed, 'link.conf'));
    symlinkSync(join(outside, 'secret'), join(allowed, 'escape'));
    await assert.rejects(writeFile(h.session, { path: b(join(allowed, 'link.conf')) }, b('new')), (e: PortholeError) =>
      code(E.ERROR_CODE_POLICY_DENIED)(e) && e.rule === 'file_write.allow_final_symlink = false');
    h.agent.setConfig({ ...h.config, fileWrite: { ...h.config.fileWrite, allowFinalSymlink: true } });
    await writeFile(h.session, { path: b(join(allowed, 'link.conf')) }, b('new'));
    assert.ok(lstatSync(join(allowed, 'link.conf')).isSymbolicLink(), 'the link stays');
    assert.equal(readFileSync(join(allowed, 'real.conf'), 'utf8'), 'new');
    await assert.rejects(writeFile(h.session, { path: b(join(allowed, 'escape')) }, b('pwned')), code(E.ERROR_CODE_POLICY_DENIED));
    assert.equal(readFileSync(join(outside, 'secret'), 'utf8'), 'outside');
  });

  it('a directory swapped for a symbolic link during the write: the request fails, nothing lands through the link', async () => {
    await start(() => undefined);
    const allowed = join(h.root, 'allowed');
    const dir = join(allowed, 'd');
    mkdirSync(dir);
    const decoy = join(allowed, 'decoy');
    mkdirSync(decoy);
    const content = randomBytes(300_000);
    let part = '';
    const write = writeFile(h.session, { path: b(join(dir, 'x')) }, content, {
      chunkSize: 100_000,
      afterChunk: async (sent) => {
        if (sent !== 100_000) return;
        // A local user swaps the directory for a link to one holding a file under the temporary's name.
        for (let i = 0; i < 100 && !readdirSync(dir).length; i++) await new Promise((r) => setTimeout(r, 10));
        part = readdirSync(dir)[0];
        renameSync(dir, join(allowed, 'd.old'));
        writeFileSync(join(decoy, part), 'decoy');
        symlinkSync(decoy, dir);
      },
    });
    await assert.rejects(write, (e: PortholeError) => /replaced while it was written/.test(e.message));
    assert.ok(!existsSync(join(decoy, 'x')), 'nothing was renamed into the other directory');
    assert.equal(readFileSync(join(decoy, part), 'utf8'), 'decoy', 'the file under the temporary\'s name there was not removed');
    assert.deepEqual(readdirSync(join(allowed, 'd.old')).filter((n) => statSync(join(allowed, 'd.old', n)).size > 0), [], 'no copy of the data is left behind');
  });

  it('writing an allowed prefix itself: allowed as a file, a directory is named as such', async () => {
    await start((c, root) => { c.fileWrite.allow = [join(root, 'allowed'), join(root, 'app.conf')]; });
    const file = join(h.root, 'app.conf');
    await writeFile(h.session, { path: b(file) }, b('setting = 1\n'));
    assert.equal(readFileSync(file, 'utf8'), 'setting = 1\n');
    await assert.rejects(writeFile(h.session, { path: b(join(h.root, 'allowed')) }, b('x')), (e: PortholeError) =>
      code(E.ERROR_CODE_IS_A_DIRECTORY)(e) && /allowed is a directory/.test(e.message));
  });

  it('refuses writes and reads the owner turned off, and sizes over the limit', async () => {
    await start((c) => { c.fileRead.enabled = false; c.fileWrite.maxFileSize = 1000; });
    const path = b(join(h.root, 'allowed/f'));
    await assert.rejects(writeFile(h.session, { path, size: 2000, sizeKnown: true }, Buffer.alloc(2000)), (e: PortholeError) =>
      code(E.ERROR_CODE_POLICY_DENIED)(e) && e.rule === 'file_write.max_file_size = 1000');
    // A stream of unknown size is stopped when it passes the limit.
    await assert.rejects(writeFile(h.session, { path }, Buffer.alloc(3000), { chunkSize: 500 }), code(E.ERROR_CODE_POLICY_DENIED));
    await writeFile(h.session, { path }, Buffer.alloc(1000));
    await assert.rejects(readFile(h.session, { path }), (e: PortholeError) =>
      code(E.ERROR_CODE_POLICY_DENIED)(e) && e.rule === 'file_read.enabled = false' && /disabled by the guest's owner/.test(e.message));
    h.agent.setConfig({ ...h.config, fileWrite: { ...h.config.fileWrite, enabled: false } });
    await assert.rejects(writeFile(h.session, { path }, b('x')), (e: PortholeError) => code(E.ERROR_CODE_POLICY_DENIED)(e) && e.rule === 'file_write.enabled = false');
    const refused = h.audit.filter((l) => l.result === 'POLICY_DENIED');
    assert.ok(refused.length >= 4 && refused.every((l) => typeof l.rule === 'string'));
  });
});
