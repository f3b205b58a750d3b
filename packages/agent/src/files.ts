import { promises as fsp, constants as fsc, mkdirSync, readdirSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { v1, PortholeError, Stream, MAX_CHUNK_SIZE, bytesOf } from '@porthole/protocol';
import { Policy } from './policy';
import { UserDb } from './users';
import { AuditLogger } from './audit';
import { components, isRoot, joinComponents, normalize, showPath } from './paths';
import { checkWindowsWrite, setWindowsOwner } from './windows/files';
import { crypto } from './builtins';
import { Sha256, sha256For } from './sha256';

const E = v1.ErrorCode;
const WINDOWS = process.platform === 'win32';

export interface FileContext {
  policy: Policy;
  users: UserDb;
  transfers: TransferStore;
  log: AuditLogger;
}

/**
 * Content for a write: chunks in order, each with its offset in the file. A chunk's data may be
 * reused once the next chunk is asked for (see Stream.readLent).
 */
export type ChunkSource = AsyncIterable<{ offset: number; data: Buffer }>;

function invalid(message: string, path?: Uint8Array): PortholeError {
  return new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, message, { path });
}

function safeId(requestId: string): string {
  return crypto().createHash('sha256').update(requestId).digest('hex').slice(0, 24);
}

/**
 * Unfinished transfers survive a reconnect (and an agent restart): the
 * temporary file stays next to its target and a small record says where it is.
 * Finished ones are remembered (bounded) so a retried request gets its result.
 * What is kept is bounded too: a temporary without a byte in it is no use for
 * a resume, and at most `maxUnfinished` others are kept (the newest).
 */
export class TransferStore {
  private readonly completed = new Map<string, v1.FileWriteResult.$Properties>();
  /** Records of writes under way (by file name): never swept. */
  private readonly active = new Set<string>();

  constructor(private readonly stateDir: string, private readonly abandonAfterMs: number, private readonly maxUnfinished = Infinity) {}

  private recordName(requestId: string): string {
    return `${safeId(requestId)}.json`;
  }

  private recordPath(requestId: string): string {
    return join(this.stateDir, this.recordName(requestId));
  }

  /** A write starts (or resumes): its record says where its temporary is. */
  remember(requestId: string, target: Buffer, temp: Buffer): void {
    mkdirSync(this.stateDir, { recursive: true, mode: 0o700 });
    writeFileSync(this.recordPath(requestId), JSON.stringify({ target: target.toString('base64'), temp: temp.toString('base64'), at: Date.now() }), { mode: 0o600 });
    this.active.add(this.recordName(requestId));
  }

  /** The write ended: its record, if it was kept for a resume, may now be swept. */
  release(requestId: string): void {
    this.active.delete(this.recordName(requestId));
  }

  find(requestId: string): { target: Buffer; temp: Buffer } | undefined {
    try {
      const r = JSON.parse(readFileSync(this.recordPath(requestId), 'utf8')) as { target: string; temp: string };
      return { target: Buffer.from(r.target, 'base64'), temp: Buffer.from(r.temp, 'base64') };
    } catch {
      return undefined;
    }
  }

  forget(requestId: string): void {
    try {
      unlinkSync(this.recordPath(requestId));
    } catch {
      // nothing recorded
    }
  }

  complete(requestId: string, result: v1.FileWriteResult.$Properties): void {
    this.forget(requestId);
    this.completed.set(requestId, result);
    if (this.completed.size > 1000) this.completed.delete(this.completed.keys().next().value as string);
  }

  result(requestId: string): v1.FileWriteResult.$Properties | undefined {
    return this.completed.get(requestId);
  }

  /**
   * Remove the temporaries of writes not under way that nobody resumed in time, that hold no byte,
   * or that are older than the newest `maxUnfinished`. Returns how many were removed.
   */
  sweep(now = Date.now()): number {
    let names: string[] = [];
    try {
      names = readdirSync(this.stateDir);
    } catch {
      return 0;
    }
    const kept: Array<{ record: string; temp: Buffer; at: number }> = [];
    let removed = 0;
    const remove = (record: string, temp: Buffer) => {
      try {
        unlinkSync(temp);
      } catch {
        // already gone
      }
      try {
        unlinkSync(record);
        removed++;
      } catch {
        // removed meanwhile
      }
    };
    for (const name of names.filter((n) => n.endsWith('.json') && !this.active.has(n))) {
      const record = join(this.stateDir, name);
      let entry: { record: string; temp: Buffer; at: number };
      try {
        const at = statSync(record).mtimeMs;
        entry = { record, temp: Buffer.from((JSON.parse(readFileSync(record, 'utf8')) as { temp: string }).temp, 'base64'), at };
      } catch {
        continue; // a record being written right now
      }
      const held = (() => {
        try {
          return statSync(entry.temp).size;
        } catch {
          return 0;
        }
      })();
      if (held === 0 || now - entry.at >= this.abandonAfterMs) remove(entry.record, entry.temp);
      else kept.push(entry);
    }
    kept.sort((a, b) => b.at - a.at);
    for (const old of kept.slice(this.maxUnfinished)) remove(old.record, old.temp);
    return removed;
  }
}

async function lstatOrNull(path: Buffer) {
  try {
    return await fsp.lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** `dir` with all links resolved, followed by `rest`. */
async function realPath(dir: Buffer, rest: readonly Buffer[] = []): Promise<Buffer> {
  const real = Buffer.from(await fsp.realpath(dir, { encoding: 'buffer' }));
  return rest.length ? joinComponents([...components(real), ...rest]) : real;
}

/**
 * Walk the parents of `path`, creating missing ones when asked, and check where they really lead:
 * wherever a link is on the way, the real location of what is asked for must be allowed too.
 */
async function prepareParent(ctx: FileContext, path: Buffer, req: v1.FileWriteRequest.$Properties): Promise<Buffer> {
  const parts = components(path);
  const uid = ctx.users.user(req.parentOwner)?.uid;
  const gid = ctx.users.group(req.parentGroup);
  for (let i = 1; i < parts.length; i++) {
    const dir = joinComponents(parts.slice(0, i));
    let st = await lstatOrNull(dir);
    if (!st) {
      if (!req.mkdirParents) {
        throw new PortholeError(E.ERROR_CODE_NOT_FOUND, `parent directory ${showPath(dir)} does not exist (ask for mkdir to create it)`, { path: dir });
      }
      ctx.policy.checkPath('file_write', dir);
      const made = await fsp.mkdir(dir, { mode: req.hasParentMode ? req.parentMode! : 0o755 }).then(() => true, (err: NodeJS.ErrnoException) => {
        if (err.code === 'EEXIST') return false; // another write made it meanwhile: checked below like any existing one
        throw err;
      });
      if (made) {
        // Owner first: a change of owner clears the set-group-ID bit the mode may ask for.
        if (uid !== undefined || gid !== undefined) await fsp.chown(dir, uid ?? -1, gid ?? -1);
        if (req.hasParentMode) await fsp.chmod(dir, req.parentMode!); // umask must not narrow the owner's mode
        continue;
      }
      st = await fsp.lstat(dir);
    }
    if (st.isSymbolicLink()) {
      const target = await fsp.stat(dir).catch(() => null);
      if (!target?.isDirectory()) throw new PortholeError(E.ERROR_CODE_NOT_A_DIRECTORY, `${showPath(dir)} is not a directory`, { path: dir });
      // Checked before anything is created below it: a link must not lead mkdir out of the allowed prefixes.
      ctx.policy.checkRealLocation('file_write', await realPath(dir, parts.slice(i)), path);
    } else if (!st.isDirectory()) {
      throw new PortholeError(E.ERROR_CODE_NOT_A_DIRECTORY, `${showPath(dir)} is a file, not a directory`, { path: dir });
    }
  }
  const parent = joinComponents(parts.slice(0, -1));
  // The file itself must be allowed where it really goes (an allowed prefix may name a file).
  ctx.policy.checkRealLocation('file_write', await realPath(parent, parts.slice(-1)), path);
  return parent;
}

function sameFile(a: { dev: number; ino: number } | null, b: { dev: number; ino: number }): boolean {
  return a !== null && a.dev === b.dev && a.ino === b.ino;
}

/**
 * A directory on the path was replaced (by a link, say) while the file was written: the request fails,
 * and the content, which may now sit where nobody looks for it, is emptied through our own descriptor.
 */
async function replacedMeanwhile(handle: fsp.FileHandle, path: Buffer, when: string): Promise<PortholeError> {
  await handle.truncate(0).catch(() => undefined);
  return new PortholeError(E.ERROR_CODE_PERMISSION_DENIED,
    `${showPath(path)} was not written: a directory on its path was replaced while it was written (found ${when}); the content was discarded, send it again`, { path });
}

/** Feed `length` bytes of `src` (from its start) to `hash`, copying them to `dst` when given; memory stays bounded. */
async function hashCopy(src: fsp.FileHandle, dst: fsp.FileHandle | null, length: number, hash: Sha256): Promise<void> {
  const buf = Buffer.allocUnsafe(1024 * 1024);
  for (let off = 0; off < length;) {
    const { bytesRead } = await src.read(buf, 0, Math.min(buf.length, length - off), off);
    if (bytesRead === 0) break;
    const data = buf.subarray(0, bytesRead);
    await hash.update(data);
    for (let w = 0; dst && w < bytesRead;) w += (await dst.write(data, w, bytesRead - w, off + w)).bytesWritten;
    off += bytesRead;
  }
}

export interface WriteOutcome {
  result: v1.FileWriteResult.$Properties;
  resumedFrom: number;
}

/** The request's path, normalized; a bad one is the host's mistake (INVALID_ARGUMENT, naming it). */
function requestPath(raw: Uint8Array | null | undefined): Buffer {
  try {
    return normalize(raw ?? Buffer.alloc(0));
  } catch (err) {
    throw invalid((err as Error).message, raw ?? undefined);
  }
}

/**
 * The one write path (injection, payload media, xenstore requests): content
 * goes to a temporary file beside the target, is fsynced, verified against the
 * sha256, given its owner and mode, and renamed over the target; the directory
 * is fsynced. A cut, a cancel or a bad hash never leaves a partial target.
 */
export async function writeFileAtomic(
  ctx: FileContext,
  requestId: string,
  req: v1.FileWriteRequest.$Properties,
  source: ChunkSource,
  finalSha256: () => string | undefined = () => undefined,
): Promise<WriteOutcome> {
  ctx.policy.requireEnabled('file_write');
  const path = requestPath(req.path);
  if (isRoot(path)) throw invalid(`cannot write to ${showPath(path)}`, path);
  if (WINDOWS) checkWindowsWrite(req);
  ctx.policy.checkPath('file_write', path);
  if (req.sizeKnown) ctx.policy.checkSize(Number(req.size ?? 0));

  const done = ctx.transfers.result(requestId);
  if (done && Buffer.from(done.path ?? []).equals(path)) {
    // A retry of a request that already finished: nothing to write again.
    for await (const _ of source) { /* drain what the sender still sends */ }
    return { result: done, resumedFrom: -1 };
  }

  let parent = await prepareParent(ctx, path, req);
  // `target` is where the content goes; `path` is what the host asked for (they differ for a final link).
  let target = path;
  let existing = await lstatOrNull(path);
  if (existing?.isSymbolicLink()) {
    if (!ctx.policy.config.fileWrite.allowFinalSymlink) {
      throw new PortholeError(E.ERROR_CODE_POLICY_DENIED, `${showPath(path)} is a symbolic link; the guest's owner does not allow writing through links`, {
        rule: 'file_write.allow_final_symlink = false', path,
      });
    }
    // The link stays; the file it points to gets the content, and must itself be allowed.
    target = await realPath(path);
    ctx.policy.checkRealLocation('file_write', target, path);
    parent = joinComponents(components(target).slice(0, -1));
    existing = await lstatOrNull(target);
  }
  if (existing?.isDirectory()) throw new PortholeError(E.ERROR_CODE_IS_A_DIRECTORY, `${showPath(path)} is a directory`, { path });
  const overwrite = req.overwrite ?? v1.OverwritePolicy.OVERWRITE_REPLACE;
  if (existing && overwrite === v1.OverwritePolicy.OVERWRITE_FAIL_IF_EXISTS) {
    throw new PortholeError(E.ERROR_CODE_ALREADY_EXISTS, `${showPath(path)} already exists`, { path });
  }
  const user = ctx.users.user(req.owner);
  const gid = ctx.users.group(req.group) ?? (req.keepGroup ? undefined : user?.gid);
  const uid = user?.uid;

  const base = components(target).pop()!;
  const temp = joinComponents([...components(parent), Buffer.concat([Buffer.from('.'), base, Buffer.from(`.porthole-${safeId(requestId)}.part`)])]);
  let position = 0;
  let handle: fsp.FileHandle;
  const resume = Number(req.resumeOffset ?? 0);
  const append = overwrite === v1.OverwritePolicy.OVERWRITE_APPEND;
  // The held bytes of an append include the old file, so offsets would not match the host's: start again instead.
  if (append && resume > 0) throw invalid('an append cannot be resumed; send it again from the start', path);
  const recorded = resume > 0 ? ctx.transfers.find(requestId) : undefined;
  if (resume > 0) {
    if (!recorded || !recorded.temp.equals(temp)) {
      throw invalid(`nothing to resume for request ${requestId} (ask for the transfer status first)`, path);
    }
    handle = await fsp.open(temp, fsc.O_RDWR);
    const have = (await handle.stat()).size;
    if (have < resume) {
      await handle.close();
      throw invalid(`cannot resume at ${resume}: only ${have} bytes are held`, path);
    }
    await handle.truncate(resume);
  } else {
    await fsp.unlink(temp).catch(() => undefined);
    handle = await fsp.open(temp, fsc.O_CREAT | fsc.O_EXCL | fsc.O_WRONLY, 0o600);
  }
  /** The temporary's identity: the name may come to lead elsewhere, the inode stays ours. */
  const made = await handle.stat();
  // A large one that begins while the hashing thread starts is read back from the temporary by it once it runs.
  const hash = sha256For(req.sizeKnown ? Number(req.size) : resume, ctx.log, { path: temp, dev: made.dev, ino: made.ino });
  if (resume > 0) {
    // The hash covers the whole file: read back what is already held.
    await hashCopy(handle, null, resume, hash);
    position = resume;
  } else if (append && existing?.isFile()) {
    const old = await fsp.open(target, fsc.O_RDONLY);
    await hashCopy(old, handle, existing.size, hash).finally(() => old.close());
  }
  // Chunk offsets count from the start of the new content.
  const appendBase = append && existing?.isFile() ? existing.size : 0;
  let keepForResume = false;
  try {
    ctx.transfers.remember(requestId, path, temp);
    for await (const chunk of source) {
      if (chunk.offset !== position) throw invalid(`chunk at offset ${chunk.offset}, expected ${position}`, path);
      ctx.policy.checkSize(appendBase + position + chunk.data.length);
      const at = appendBase + position;
      const written = handle.write(chunk.data, 0, chunk.data.length, at);
      await hash.update(chunk.data); // while the thread pool writes
      for (let off = (await written).bytesWritten; off < chunk.data.length;) {
        off += (await handle.write(chunk.data, off, chunk.data.length - off, at + off)).bytesWritten;
      }
      position += chunk.data.length;
    }
    if (req.sizeKnown && position !== Number(req.size)) {
      throw invalid(`received ${position} bytes, the request announced ${req.size}`, path);
    }
    const sha256 = await hash.digest();
    const expected = (finalSha256() || req.sha256 || '').toLowerCase();
    if (expected && expected !== sha256) {
      throw new PortholeError(E.ERROR_CODE_CHECKSUM_MISMATCH, `content sha256 ${sha256} does not match the expected ${expected}; ${showPath(path)} was not changed`, { path });
    }
    const finalUid = uid ?? (existing?.isFile() ? existing.uid : process.getuid?.() ?? 0);
    const finalGid = gid ?? (existing?.isFile() ? existing.gid : process.getgid?.() ?? 0);
    // Owner first: a change of owner clears the set-user-ID and set-group-ID bits the mode may ask for.
    await handle.chown(finalUid, finalGid);
    await handle.chmod(req.hasMode ? req.mode! & 0o7777 : existing?.isFile() ? existing.mode & 0o7777 : 0o644);
    await handle.sync();
    // What is reported is what the file has.
    const mode = (await handle.stat()).mode & 0o7777;
    if (WINDOWS) await setWindowsOwner(temp, req.owner);
    // The directory may have been swapped for a link since it was checked: rename only our own temporary.
    if (!sameFile(await lstatOrNull(temp), made)) throw await replacedMeanwhile(handle, path, 'before the rename');
    if (overwrite === v1.OverwritePolicy.OVERWRITE_FAIL_IF_EXISTS) {
      // link() refuses to replace: no window in which another writer's file is overwritten.
      await fsp.link(temp, target).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'EEXIST') throw new PortholeError(E.ERROR_CODE_ALREADY_EXISTS, `${showPath(path)} already exists`, { path });
        throw err;
      });
      await fsp.unlink(temp);
    } else {
      await fsp.rename(temp, target);
    }
    if (!sameFile(await lstatOrNull(target), made)) throw await replacedMeanwhile(handle, path, 'during the rename');
    // Windows cannot flush a folder (and NTFS logs the rename itself).
    if (!WINDOWS) {
      const dir = await fsp.open(parent, fsc.O_RDONLY | fsc.O_DIRECTORY);
      await dir.sync().finally(() => dir.close());
    }
    const result: v1.FileWriteResult.$Properties = { path, size: appendBase + position, sha256, uid: finalUid, gid: finalGid, mode };
    ctx.transfers.complete(requestId, result);
    return { result, resumedFrom: resume };
  } catch (err) {
    const e = PortholeError.from(err, `writing ${showPath(path)}`);
    // A cut connection keeps what arrived (fsynced) for a resume; any other failure cleans up.
    keepForResume = !append && (e.code === E.ERROR_CODE_SESSION_RESET || e.code === E.ERROR_CODE_CANCELLED);
    throw e;
  } finally {
    if (keepForResume) {
      await handle.sync().catch(() => undefined);
      await handle.close().catch(() => undefined);
    } else {
      // Only our own temporary: through a swapped directory the name may lead to someone else's file.
      if (sameFile(await lstatOrNull(temp).catch(() => null), made)) await fsp.unlink(temp).catch(() => undefined);
      await handle.close().catch(() => undefined);
      ctx.transfers.forget(requestId);
    }
    ctx.transfers.release(requestId);
    // Kept ones are bounded in number: a storm of cut writes must not fill the disk with temporaries.
    if (keepForResume) ctx.transfers.sweep();
  }
}

/** How much of an unfinished write the agent holds (for a resume after reconnecting). */
export async function transferStatus(ctx: FileContext, requestId: string): Promise<v1.FileTransferStatus.$Properties> {
  const done = ctx.transfers.result(requestId);
  if (done) return { found: true, offset: Number(done.size), completed: done };
  const held = ctx.transfers.find(requestId);
  if (!held) return { found: false, offset: 0 };
  // Only bytes on disk count: flush before reporting, so a crash after the answer loses nothing promised.
  const handle = await fsp.open(held.temp, fsc.O_RDWR).catch(() => null);
  if (!handle) {
    ctx.transfers.forget(requestId);
    return { found: false, offset: 0 };
  }
  try {
    await handle.sync();
    return { found: true, offset: (await handle.stat()).size };
  } finally {
    await handle.close();
  }
}

/** Adapt a protocol stream carrying a file write into a chunk source. */
export function chunksFromStream(stream: Stream, onEnd: (sha256: string) => void): ChunkSource {
  return {
    async *[Symbol.asyncIterator]() {
      // Lent: the writer is done with a chunk (written and hashed) before it asks for the next.
      for await (const m of stream.lent()) {
        if (m.body === 'chunk') yield { offset: Number(m.chunk!.offset ?? 0), data: bytesOf(m.chunk!.data) };
        else if (m.body === 'fileWriteEnd') onEnd(m.fileWriteEnd!.sha256 ?? '');
        else if (m.body === 'cancel') throw new PortholeError(E.ERROR_CODE_CANCELLED, `cancelled by the host: ${m.cancel!.reason || 'no reason given'}`);
      }
    },
  };
}

/**
 * Bytes per file read when streaming a file out: a read goes through the thread pool, and under
 * emulation each hand-off and each fresh 128 KiB buffer (mapped and unmapped) costs more than the
 * bytes; a MiB at a time, sent on in messages of the stream's chunk size (a MiB to a host that reads
 * that much).
 */
const READ_AHEAD = MAX_CHUNK_SIZE;

/** Written pieces' buffers kept for the next reads: one being read, one hashed, one on its way out. */
const SPARE_PIECES = 3;

/** Stream a file (or a range of it) to the host with its metadata and sha256. */
export async function readFileToStream(ctx: FileContext, req: v1.FileReadRequest.$Properties, stream: Stream): Promise<{ path: Buffer; length: number; sha256: string }> {
  ctx.policy.requireEnabled('file_read');
  const path = requestPath(req.path);
  ctx.policy.checkPath('file_read', path);
  const { realpath } = fsp;
  const real = Buffer.from(await realpath(path, { encoding: 'buffer' }));
  try {
    ctx.policy.checkPath('file_read', real);
  } catch {
    throw new PortholeError(E.ERROR_CODE_POLICY_DENIED, `${showPath(path)} leads through a symbolic link to ${showPath(real)}, which the guest's owner does not allow reading`, {
      rule: 'file_read.allow', path,
    });
  }
  const handle = await fsp.open(real, fsc.O_RDONLY);
  try {
    const st = await handle.stat();
    if (st.isDirectory()) throw new PortholeError(E.ERROR_CODE_IS_A_DIRECTORY, `${showPath(path)} is a directory`, { path });
    const offset = Number(req.offset ?? 0);
    if (offset > st.size) throw invalid(`offset ${offset} is past the end of ${showPath(path)} (${st.size} bytes)`, path);
    const length = req.length ? Math.min(Number(req.length), st.size - offset) : st.size - offset;
    await stream.send({
      fileReadHeader: {
        path, size: st.size, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid,
        owner: ctx.users.userName(st.uid), group: ctx.users.groupName(st.gid), mtimeMs: Math.floor(st.mtimeMs), length,
      },
    });
    const hash = sha256For(length, ctx.log);
    // A piece's buffer is filled again once the channel has written it out: a fresh MiB is mapped by
    // malloc and each of its pages faults in at the first write, which under TCG costs more than the
    // file read (64 MiB read into fresh buffers 620–830 ms, into one buffer 190–310).
    const spare: Buffer[] = [];
    const readAt = async (at: number) => {
      const want = Math.min(READ_AHEAD, length - at);
      const whole = spare.pop() ?? Buffer.allocUnsafe(want);
      const { bytesRead } = await handle.read(whole, 0, Math.min(whole.length, want), offset + at);
      return { whole, data: whole.subarray(0, bytesRead) };
    };
    const sendPiece = async (whole: Buffer, data: Buffer, at: number) => {
      let unwritten = Math.ceil(data.length / stream.chunkSize);
      const written = () => {
        if (--unwritten === 0 && spare.length < SPARE_PIECES) spare.push(whole);
      };
      for (let from = 0; from < data.length; from += stream.chunkSize) {
        await stream.send({ chunk: { offset: at + from, data: data.subarray(from, from + stream.chunkSize) } }, written);
      }
    };
    let sent = 0;
    // Three pieces at once: the next one read, this one hashed, the one before on its way to the port. Under
    // TCG writing a MiB to the port takes about as long as hashing it, and waiting for the write left the
    // agent idle a third of the time.
    let next = length > 0 ? readAt(0) : undefined;
    let sending = Promise.resolve();
    try {
      while (next) {
        const { whole, data } = await next;
        if (data.length === 0) break; // the file shrank while being read
        const at = sent;
        sent += data.length;
        next = sent < length ? readAt(sent) : undefined;
        await hash.update(data);
        await sending;
        sending = sendPiece(whole, data, offset + at);
        sending.catch(() => undefined); // awaited with the next piece, or below
      }
      await sending;
    } finally {
      void next?.catch(() => undefined); // a read still under way when sending failed
    }
    const sha256 = await hash.digest();
    await stream.send({ fileReadResult: { sha256, length: sent } });
    return { path, length: sent, sha256 };
  } finally {
    await handle.close();
  }
}
