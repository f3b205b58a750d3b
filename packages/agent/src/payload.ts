// Payload media (format: packages/media/FORMAT.md): find a Porthole-labelled CD
// or floppy, mount it read-only, verify it and apply it through the same write
// path as injection, then report it on the channel and in the audit log.
import { promises as fsp, constants as fsc, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { v1, PortholeError, Session } from '@porthole/protocol';
import {
  isPayloadLabel, ManifestFile, ManifestPayload, MANIFEST_FILE_NAME, MAX_MANIFEST_BYTES, parsePayloadManifest, PayloadManifest,
  PayloadManifestError, Principal,
} from '@porthole/media/manifest';
import { FileContext, writeFileAtomic } from './files';
import { applyForeignMedium } from './foreign-media';
import { alreadyApplied, chunksOf, readRecord, sha256File, writeRecord } from './payload-common';
import { normalize, showPath } from './paths';
import { AuditLogger } from './audit';
import { Policy } from './policy';
import { removableVolumes } from './windows/drives';
import { killProcessTree } from './windows/processes';
import { childProcess, crypto, execFileAsync } from './builtins';

const E = v1.ErrorCode;
const S = v1.PayloadState;
const WINDOWS = process.platform === 'win32';

/** A payload command that runs longer than this is killed (with its process group) and the payload fails. */
export const PAYLOAD_COMMAND_TIMEOUT_MS = 30 * 60_000;
/**
 * Opening an empty floppy drive makes the kernel try to read it and log an I/O
 * error (an empty CD drive just answers "no medium"), so an empty floppy drive
 * is checked this seldom; a drive holding a disk is checked on every pass.
 */
const EMPTY_FLOPPY_CHECK_MS = 60_000;
/** Events kept for a broker that is not connected yet (a medium applied at boot); the oldest go first. */
const MAX_PENDING_EVENTS = 64;

export interface ApplyOptions {
  /** Files, policy, users and log: the injection's context (the policy as it is now). */
  files: FileContext;
  /** payload.state_dir: records of applied payloads and the commands' output. */
  stateDir: string;
  /** This boot's id: a run-once payload is not applied twice in one boot. */
  bootId: string;
  commandTimeoutMs?: number;
}

/** Where the medium is readable (its mount point, or a directory standing in for it) and what it was found as. */
export interface MediumSource {
  root: string;
  device: string;
  label: string;
}

/** The kernel's id of this boot (Linux); empty where there is none. */
export function currentBootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

/**
 * Finds `rel` ("porthole-payload.json", "files/0001") under the medium's root.
 * FAT may show names in another case, so a name is matched case-insensitively
 * when the exact one is absent. Directory listings are cached per medium.
 */
class MediumReader {
  private readonly listings = new Map<string, Promise<string[]>>();

  constructor(readonly root: string) {}

  async find(rel: string): Promise<string> {
    let dir = this.root;
    const parts = rel.split('/');
    for (const [i, part] of parts.entries()) {
      let names = this.listings.get(dir);
      if (!names) {
        // A directory of the medium must be one, not a link leading elsewhere in the guest.
        const isDir = dir === this.root || (await fsp.lstat(dir)).isDirectory();
        names = isDir ? fsp.readdir(dir) : Promise.reject(new PortholeError(E.ERROR_CODE_NOT_A_DIRECTORY, `${parts.slice(0, i).join('/')} on the medium is not a directory`));
        names.catch(() => undefined); // awaited below; a cached rejection must not count as unhandled
        this.listings.set(dir, names);
      }
      const list = await names;
      const name = list.includes(part) ? part : list.find((n) => n.toLowerCase() === part.toLowerCase());
      if (!name) throw new PortholeError(E.ERROR_CODE_NOT_FOUND, `${rel} is missing on the medium`);
      dir = join(dir, name);
    }
    return dir;
  }

  /** A regular file of the medium with its size checked (a link or device on a medium is refused). */
  async regularFile(rel: string, size?: number, max?: number): Promise<string> {
    const path = await this.find(rel);
    const st = await fsp.lstat(path);
    if (!st.isFile()) throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, `${rel} on the medium is not a regular file`);
    if (size !== undefined && st.size !== size) {
      throw new PortholeError(E.ERROR_CODE_CHECKSUM_MISMATCH, `${rel} on the medium has ${st.size} bytes, the manifest says ${size}`);
    }
    if (max !== undefined && st.size > max) throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, `${rel} on the medium is larger than ${max} bytes`);
    return path;
  }
}

const principal = (p: Principal | null): v1.Principal.$Properties | undefined => p ?? undefined;

function writeRequest(f: ManifestFile): v1.FileWriteRequest.$Properties {
  return {
    path: f.path, size: f.size, sizeKnown: true, sha256: f.sha256, owner: principal(f.owner), group: principal(f.group),
    mode: f.mode ?? 0, hasMode: f.mode !== null, overwrite: v1.OverwritePolicy.OVERWRITE_REPLACE, mkdirParents: true,
  };
}

/** Everything that can be checked before a file is written: the path, the owner's policy, users, the content on the medium. */
async function verifyPayload(ctx: FileContext, medium: MediumReader, p: ManifestPayload, runCommands: boolean): Promise<string[]> {
  const sources: string[] = [];
  for (const f of p.files) {
    if (!WINDOWS && /^[A-Za-z]:[\\/]/.test(f.path.toString('latin1'))) {
      throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, `${f.pathText} is a Windows path; this agent runs on ${process.platform}`, { path: f.path });
    }
    ctx.policy.requireEnabled('file_write');
    ctx.policy.checkPath('file_write', normalize(f.path));
    ctx.policy.checkSize(f.size);
    ctx.users.user(f.owner);
    ctx.users.group(f.group);
    const source = await medium.regularFile(f.source, f.size);
    const sha256 = await sha256File(source);
    if (sha256 !== f.sha256) {
      throw new PortholeError(E.ERROR_CODE_CHECKSUM_MISMATCH, `${f.source} on the medium (for ${f.pathText}) hashes to ${sha256}, the manifest says ${f.sha256}`, { path: f.path });
    }
    sources.push(source);
  }
  if (runCommands) for (const c of p.commands) ctx.policy.checkExec(c.argv[0], 'root');
  return sources;
}

/** Why the owner's policy keeps payload commands from running, or undefined when they may run. */
function commandsDenied(policy: Policy): PortholeError | undefined {
  const rule = !policy.config.payload.runCommands ? 'payload.run_commands = false' : !policy.config.exec.enabled ? 'exec.enabled = false' : undefined;
  return rule ? new PortholeError(E.ERROR_CODE_POLICY_DENIED, `not run: payload commands are disabled by the guest's owner`, { rule }) : undefined;
}

function killGroup(pid: number | undefined): void {
  if (!pid) return;
  if (WINDOWS) return killProcessTree(pid); // no process groups there
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** Runs one payload command as root in / (the agent's account in %SystemDrive%\ on Windows), its output appended to `output` (never to the audit log). */
async function runCommand(argv: string[], output: fsp.FileHandle, timeoutMs: number): Promise<v1.ExecExit.$Properties> {
  const started = Date.now();
  const cwd = WINDOWS ? `${process.env.SystemDrive ?? 'C:'}\\` : '/';
  const child = childProcess().spawn(argv[0], argv.slice(1), { cwd, stdio: ['ignore', output.fd, output.fd], detached: !WINDOWS, windowsHide: true });
  const outcome = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; timedOut: boolean } | Error>((resolve) => {
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; killGroup(child.pid); }, timeoutMs);
    child.once('error', (err) => { clearTimeout(timer); resolve(err); });
    child.once('exit', (code, signal) => { clearTimeout(timer); resolve({ code, signal, timedOut }); });
  });
  if (outcome instanceof Error) {
    if ((outcome as NodeJS.ErrnoException).code === 'ENOENT') throw new PortholeError(E.ERROR_CODE_NOT_FOUND, `command not found in the guest: ${argv[0]}`);
    throw PortholeError.from(outcome, `cannot run ${argv[0]}`);
  }
  return { exited: outcome.code !== null, code: outcome.code ?? 0, signal: outcome.signal ?? '', durationMs: Date.now() - started, timedOut: outcome.timedOut };
}

function exitError(argv: string[], exit: v1.ExecExit.$Properties): PortholeError | undefined {
  if (exit.timedOut) return new PortholeError(E.ERROR_CODE_TIMEOUT, `${argv[0]} ran longer than the payload command limit and was killed`);
  if (!exit.exited) return new PortholeError(E.ERROR_CODE_INTERNAL, `${argv[0]} was killed by ${exit.signal}`);
  if (exit.code !== 0) return new PortholeError(E.ERROR_CODE_INTERNAL, `${argv[0]} exited with status ${exit.code}`);
  return undefined;
}

/** Runs a payload's commands in order; the first failure stops the rest. */
async function runCommands(opts: ApplyOptions, p: ManifestPayload): Promise<{ results: v1.PayloadCommandResult.$Properties[]; error?: PortholeError }> {
  const { policy, log } = opts.files;
  const results: v1.PayloadCommandResult.$Properties[] = [];
  const denied = commandsDenied(policy);
  if (denied) {
    for (const c of p.commands) results.push({ argv: c.argv.map((a) => Buffer.from(a)), error: denied.toProto() });
    if (p.commands.length) log.warn('payload commands not run', { payloadId: p.id, commands: p.commands.length, rule: denied.rule });
    return { results };
  }
  if (!p.commands.length) return { results };
  await fsp.mkdir(opts.stateDir, { recursive: true, mode: 0o700 });
  const output = await fsp.open(join(opts.stateDir, `${p.id}.log`), fsc.O_WRONLY | fsc.O_CREAT | fsc.O_APPEND, 0o600);
  try {
    for (const c of p.commands) {
      const argv = c.argv.map((a) => Buffer.from(a));
      const shown = policy.redactArgv(c.argv);
      try {
        const exit = await runCommand(c.argv, output, opts.commandTimeoutMs ?? PAYLOAD_COMMAND_TIMEOUT_MS);
        const error = exitError(c.argv, exit);
        results.push({ argv, exit, error: error?.toProto() });
        log.info('payload command done', { payloadId: p.id, argv: shown, exitCode: exit.exited ? exit.code : undefined, signal: exit.signal || undefined, durationMs: exit.durationMs });
        if (error) return { results, error };
      } catch (err) {
        const e = PortholeError.from(err);
        results.push({ argv, error: e.toProto() });
        log.warn('payload command failed', { payloadId: p.id, argv: shown, error: e.message });
        return { results, error: e };
      }
    }
    return { results };
  } finally {
    await output.close();
  }
}

async function applyPayload(opts: ApplyOptions, medium: MediumReader, source: MediumSource, p: ManifestPayload): Promise<v1.PayloadEvent.$Properties> {
  const { log } = opts.files;
  const event: v1.PayloadEvent.$Properties = { payloadId: p.id, contentSha256: p.contentSha256, device: source.device, label: source.label };
  const about = { payloadId: p.id, contentSha256: p.contentSha256, availability: p.availability, device: source.device };
  if (alreadyApplied(await readRecord(opts.stateDir, p.id), p, opts.bootId)) {
    log.info('payload skipped: applied before', about);
    return { ...event, state: S.PAYLOAD_SKIPPED };
  }
  const policy = opts.files.policy;
  let sources: string[];
  try {
    sources = await verifyPayload(opts.files, medium, p, !commandsDenied(policy));
  } catch (err) {
    const e = PortholeError.from(err);
    log.warn('payload refused', { ...about, error: e.message, rule: e.rule, path: e.path ? showPath(e.path) : undefined });
    return { ...event, state: S.PAYLOAD_REFUSED, error: e.toProto() };
  }
  const files: v1.PayloadFileResult.$Properties[] = [];
  for (const [i, f] of p.files.entries()) {
    try {
      // A fresh request id: a completed write is remembered by id, and a payload applied again must really write.
      const { result } = await writeFileAtomic(opts.files, `payload:${p.id}:${crypto().randomUUID()}`, writeRequest(f), chunksOf(sources[i]));
      files.push({ path: f.path, sha256: result.sha256, size: result.size });
      log.info('payload file written', { payloadId: p.id, path: showPath(f.path), size: result.size, sha256: result.sha256, uid: result.uid, gid: result.gid, mode: `0${(result.mode ?? 0).toString(8)}` });
    } catch (err) {
      const e = PortholeError.from(err, `writing ${showPath(f.path)}`);
      files.push({ path: f.path, error: e.toProto() });
      log.warn('payload failed', { ...about, path: showPath(f.path), error: e.message, rule: e.rule, filesWritten: i });
      return { ...event, state: S.PAYLOAD_FAILED, files, error: e.toProto() };
    }
  }
  const commands = await runCommands(opts, p);
  if (commands.error) {
    log.warn('payload failed', { ...about, error: commands.error.message, filesWritten: files.length });
    return { ...event, state: S.PAYLOAD_FAILED, files, commands: commands.results, error: commands.error.toProto() };
  }
  await writeRecord(opts.stateDir, p, opts.bootId);
  log.info('payload applied', { ...about, files: files.length, commands: commands.results.length });
  return { ...event, state: S.PAYLOAD_APPLIED, files, commands: commands.results };
}

/**
 * Verifies and applies every payload of a medium readable under `source.root`
 * (mounted, or a directory standing in for it), in manifest order. Returns one
 * event per payload, or a single REFUSED event when the manifest itself is bad.
 */
export async function applyPayloadMedium(opts: ApplyOptions, source: MediumSource): Promise<v1.PayloadEvent.$Properties[]> {
  const { log } = opts.files;
  const medium = new MediumReader(source.root);
  let manifest: PayloadManifest;
  try {
    opts.files.policy.requireEnabled('payload');
    const path = await medium.regularFile(MANIFEST_FILE_NAME, undefined, MAX_MANIFEST_BYTES);
    manifest = parsePayloadManifest(await fsp.readFile(path, 'utf8'));
  } catch (err) {
    const e = err instanceof PayloadManifestError ? new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, err.message) : PortholeError.from(err);
    log.warn('payload medium refused', { device: source.device, label: source.label, error: e.message, field: err instanceof PayloadManifestError ? err.field : undefined, rule: e.rule });
    return [{ state: S.PAYLOAD_REFUSED, device: source.device, label: source.label, error: e.toProto() }];
  }
  log.info('payload medium verified', { device: source.device, label: source.label, manifestSha256: manifest.manifestSha256, payloads: manifest.payloads.length });
  const events: v1.PayloadEvent.$Properties[] = [];
  for (const p of manifest.payloads) events.push(await applyPayload(opts, medium, source, p));
  return events;
}

// ---------------------------------------------------------------- finding media

export interface MediumProbe {
  fsType: 'iso9660' | 'vfat';
  label: string;
  /** Identifies the medium in the drive (hash of its first sectors): a change means another medium. */
  signature: string;
}

/**
 * Reads a device's volume label without mounting it: the ISO 9660 primary
 * volume descriptor (sector 16) or the FAT boot sector. undefined when the
 * drive is empty or unreadable (the first read after a medium change may fail;
 * the next poll sees it). A medium of another kind gets an empty label.
 */
export async function probeMedium(device: string): Promise<MediumProbe | { fsType: undefined; label: ''; signature: string } | undefined> {
  let fh: fsp.FileHandle;
  try {
    // A blocking open makes the CD driver check the drive: ENOMEDIUM when empty, and the cache of an old medium is dropped.
    fh = await fsp.open(device, fsc.O_RDONLY);
  } catch {
    return undefined;
  }
  try {
    const boot = Buffer.alloc(512);
    const pvd = Buffer.alloc(2048);
    // An empty floppy drive opens but reads nothing.
    if ((await fh.read(boot, 0, boot.length, 0)).bytesRead < boot.length) return undefined;
    await fh.read(pvd, 0, pvd.length, 16 * 2048);
    const signature = crypto().createHash('sha256').update(boot).update(pvd).digest('hex');
    if (pvd[0] === 1 && pvd.toString('latin1', 1, 6) === 'CD001') return { fsType: 'iso9660', label: pvd.toString('latin1', 40, 72).trim(), signature };
    if (boot[510] === 0x55 && boot[511] === 0xaa) {
      // FAT12/16 keep the extended boot record at 38, FAT32 at 66; 0x29 says a label follows 5 bytes later.
      const at = boot[38] === 0x29 ? 43 : boot[66] === 0x29 ? 71 : -1;
      if (at > 0) return { fsType: 'vfat', label: boot.toString('latin1', at, at + 11).trim(), signature };
    }
    return { fsType: undefined, label: '', signature };
  } catch {
    return undefined;
  } finally {
    await fh.close();
  }
}

/** What the watcher needs from the agent (the Agent class provides it). */
export interface PayloadHost {
  readonly currentPolicy: Policy;
  readonly fileContext: FileContext;
  readonly log: AuditLogger;
  readonly currentSession: Session | undefined;
  readonly sessions: Set<(s: Session) => void>;
}

export interface WatcherOptions {
  /** Default /sys/block: drives are its sr* (CD) and fd* (floppy) entries. */
  sysBlock?: string;
  /** Default /dev. */
  devDir?: string;
  /** How often the drives are checked for a new medium (default 2 s). */
  intervalMs?: number;
  bootId?: string;
  commandTimeoutMs?: number;
}

/**
 * Polls the CD and floppy drives (udev is not guaranteed in a guest, and a
 * minimal init has none): each check opens the device and reads two sectors,
 * which is cheap (an empty floppy drive only once a minute, see
 * EMPTY_FLOPPY_CHECK_MS), and a medium is mounted only when its first sectors
 * changed: a Porthole medium is applied, any other (foreign) one reported, and
 * applied only where payload.foreign_targets maps its label. Events go to the connected broker, or wait
 * (bounded) for the next one to connect.
 */
export class PayloadWatcher {
  private readonly seen = new Map<string, string>();
  /** Empty floppy drives: when each may be checked again. */
  private readonly emptyFloppyUntil = new Map<string, number>();
  private readonly pending: v1.PayloadEvent.$Properties[] = [];
  private timer?: NodeJS.Timeout;
  private scanning?: Promise<void>;
  private disabledLogged = false;
  private readonly onSession = (s: Session) => this.flush(s);

  constructor(private readonly host: PayloadHost, private readonly options: WatcherOptions = {}) {}

  start(): void {
    this.host.sessions.add(this.onSession);
    void this.scan();
    this.timer = setInterval(() => void this.scan(), this.options.intervalMs ?? 2000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.host.sessions.delete(this.onSession);
  }

  /** One pass over the drives; a pass still running is joined, not repeated. */
  scan(): Promise<void> {
    this.scanning ??= this.scanDrives()
      .catch((err: Error) => { this.host.log.error('payload media check failed', { error: err.message }); })
      .finally(() => { this.scanning = undefined; });
    return this.scanning;
  }

  private async scanDrives(): Promise<void> {
    const { log } = this.host;
    if (!this.host.currentPolicy.config.payload.enabled) {
      if (!this.disabledLogged) log.info('payload media disabled by the owner (payload.enabled = false)');
      this.disabledLogged = true;
      return;
    }
    this.disabledLogged = false;
    if (WINDOWS) return this.scanDriveLetters();
    let drives: string[];
    try {
      // sysfs answers at once: read here, not through the thread pool, which a guest without CD or floppy
      // drives then never starts while idle (its four threads, fs/promises: 0.6 MiB of an idle agent on a host).
      drives = readdirSync(this.options.sysBlock ?? '/sys/block').filter((n) => /^(sr|fd)\d+$/.test(n)).sort();
    } catch {
      return;
    }
    for (const name of drives) {
      if ((this.emptyFloppyUntil.get(name) ?? 0) > Date.now()) continue;
      const device = join(this.options.devDir ?? '/dev', name);
      const probe = await probeMedium(device);
      if (!probe) {
        this.seen.delete(name);
        if (name.startsWith('fd')) this.emptyFloppyUntil.set(name, Date.now() + EMPTY_FLOPPY_CHECK_MS);
        continue;
      }
      if (this.seen.get(name) === probe.signature) continue;
      this.seen.set(name, probe.signature);
      if (!probe.fsType) continue;
      // Media Porthole did not build are mounted only to be reported (and applied where the owner maps their label).
      const foreign = !isPayloadLabel(probe.label);
      if (foreign && !this.host.currentPolicy.config.payload.foreignMedia) continue;
      log.info(foreign ? 'foreign medium detected' : 'payload medium detected', { device, label: probe.label, fsType: probe.fsType });
      for (const event of await this.applyFrom(device, probe, foreign)) this.report(event);
    }
  }

  /**
   * Windows: the media in CD and floppy drive letters, read where Windows mounted them. Only
   * Porthole media: a foreign medium's files would get a POSIX mode, which Windows refuses.
   */
  private async scanDriveLetters(): Promise<void> {
    const volumes = removableVolumes();
    for (const drive of this.seen.keys()) if (!volumes.some((v) => v.drive === drive)) this.seen.delete(drive);
    for (const v of volumes) {
      if (this.seen.get(v.drive) === v.signature) continue;
      this.seen.set(v.drive, v.signature);
      if (!isPayloadLabel(v.label)) continue;
      this.host.log.info('payload medium detected', { device: v.drive, label: v.label, fsType: v.fsType });
      for (const event of await this.applyMounted({ root: v.root, device: v.drive, label: v.label }, false, v.fsType)) this.report(event);
    }
  }

  private async applyFrom(device: string, probe: MediumProbe, foreign: boolean): Promise<v1.PayloadEvent.$Properties[]> {
    const { log } = this.host;
    const stateDir = this.host.currentPolicy.config.payload.stateDir;
    // Content files may hold secrets: the mount point sits in the agent's 0700 state directory.
    const mountPoint = join(stateDir, 'mnt', device.split('/').pop()!);
    try {
      await fsp.mkdir(stateDir, { recursive: true, mode: 0o700 });
      await fsp.mkdir(mountPoint, { recursive: true, mode: 0o700 });
      await execFileAsync('mount', ['-t', probe.fsType, '-o', 'ro,nosuid,nodev,noexec', device, mountPoint]);
    } catch (err) {
      const message = `cannot mount ${device} (${probe.fsType}): ${((err as { stderr?: string }).stderr || (err as Error).message).trim()}`;
      log.error('payload medium not applied', { device, label: probe.label, error: message });
      return [{ state: S.PAYLOAD_FAILED, device, label: probe.label, foreign, error: new PortholeError(E.ERROR_CODE_INTERNAL, message).toProto() }];
    }
    try {
      return await this.applyMounted({ root: mountPoint, device, label: probe.label }, foreign, probe.fsType);
    } finally {
      await execFileAsync('umount', [mountPoint]).catch((err: { stderr?: string; message: string }) => {
        log.error('cannot unmount the payload medium', { device, mountPoint, error: (err.stderr || err.message).trim() });
      });
    }
  }

  /** Applies (or reports) a medium readable under `source.root`. */
  private async applyMounted(source: MediumSource, foreign: boolean, fsType: string): Promise<v1.PayloadEvent.$Properties[]> {
    try {
      const stateDir = this.host.currentPolicy.config.payload.stateDir;
      const opts = { files: this.host.fileContext, stateDir, bootId: this.options.bootId ?? currentBootId(), commandTimeoutMs: this.options.commandTimeoutMs };
      return foreign ? [await applyForeignMedium(opts, source, fsType)] : await applyPayloadMedium(opts, source);
    } catch (err) {
      // Unexpected (e.g. the state directory cannot be written): reported like any failure, and the watcher goes on.
      const e = PortholeError.from(err);
      this.host.log.error('payload medium not applied', { device: source.device, label: source.label, error: e.message });
      return [{ state: S.PAYLOAD_FAILED, device: source.device, label: source.label, foreign, error: e.toProto() }];
    }
  }

  /** Send an event to the connected broker, or keep it (bounded) for the next one to connect. */
  report(event: v1.PayloadEvent.$Properties): void {
    if (this.host.currentSession?.sendEvent({ payload: event })) return;
    this.pending.push(event);
    if (this.pending.length > MAX_PENDING_EVENTS) this.pending.shift();
  }

  private flush(session: Session): void {
    while (this.pending.length && session.sendEvent({ payload: this.pending[0] })) this.pending.shift();
  }
}
