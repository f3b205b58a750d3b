// Media Porthole did not build — oVirt/vdsm payloads (each file at its own path),
// cloud-init config drives (label config-2), any other CD or floppy: listed and
// reported to the host, and applied only where the owner's
// payload.foreign_targets maps the medium's label to a directory. Their files
// are meant for other software in the guest, so nothing else is done with them.
import { promises as fsp } from 'node:fs';
import { v1, PortholeError } from '@porthole/protocol';
import { writeFileAtomic } from './files';
import { normalize, showPath } from './paths';
import type { ApplyOptions, MediumSource } from './payload';
import { alreadyApplied, chunksOf, readRecord, sha256File, writeRecord } from './payload-common';
import { crypto } from './builtins';

const E = v1.ErrorCode;
const S = v1.PayloadState;

/** Files an event lists (and a medium may hold to be applied). */
export const MAX_LISTED_FILES = 1000;
/** Bytes of paths an event lists: an event must stay a small frame. */
const MAX_LISTED_PATH_BYTES = 256 * 1024;
/** Files applied from a foreign medium: root's, readable by its group (vdsm writes payload files 0640 too; they may hold secrets). */
export const FOREIGN_FILE_MODE = 0o640;

interface Listed {
  /** Path on the medium, e.g. openstack/latest/user_data (its bytes as the file system gives them). */
  rel: Buffer;
  abs: Buffer;
  size: number;
}

interface Listing {
  files: Listed[];
  truncated: boolean;
  /** The first entry that is neither a regular file nor a directory (a link, a device): such a medium is not applied. */
  irregular?: Buffer;
}

/** The medium's regular files, depth first in name order, bounded. */
async function listMedium(root: string): Promise<Listing> {
  const listing: Listing = { files: [], truncated: false };
  let pathBytes = 0;
  const walk = async (dir: Buffer, rel: Buffer): Promise<void> => {
    const names = (await fsp.readdir(dir, { encoding: 'buffer' })).sort(Buffer.compare);
    for (const name of names) {
      if (listing.truncated) return;
      const abs = Buffer.concat([dir, Buffer.from('/'), name]);
      const path = rel.length ? Buffer.concat([rel, Buffer.from('/'), name]) : name;
      const st = await fsp.lstat(abs);
      if (st.isDirectory()) await walk(abs, path);
      else if (!st.isFile()) listing.irregular ??= path;
      else if (listing.files.length >= MAX_LISTED_FILES || pathBytes + path.length > MAX_LISTED_PATH_BYTES) listing.truncated = true;
      else {
        listing.files.push({ rel: path, abs, size: st.size });
        pathBytes += path.length;
      }
    }
  };
  await walk(Buffer.from(root), Buffer.alloc(0));
  return listing;
}

/** The directory the owner maps this label to: the exact label first, then regardless of case. */
export function foreignTarget(targets: Record<string, string>, label: string): string | undefined {
  const l = label.trim();
  if (!l) return undefined;
  return targets[l] ?? Object.entries(targets).find(([k]) => k.toUpperCase() === l.toUpperCase())?.[1];
}

/**
 * Reports a foreign medium readable under `source.root`; applies it when the
 * owner maps its label to a directory: every file is checked (policy, size) and
 * hashed before the first is written under that directory with its path on the
 * medium, root's and mode 0640. Like a permanent payload, it is applied again
 * only when its content (or the directory) changed.
 */
export async function applyForeignMedium(opts: ApplyOptions, source: MediumSource, fsType: string): Promise<v1.PayloadEvent.$Properties> {
  const { log, policy } = opts.files;
  const listing = await listMedium(source.root);
  const about = { device: source.device, label: source.label, fsType, files: listing.files.length, truncated: listing.truncated || undefined };
  const event: v1.PayloadEvent.$Properties = {
    foreign: true, fsType, device: source.device, label: source.label,
    mediumFiles: listing.files.map((f) => ({ path: f.rel, size: f.size })), mediumFilesTruncated: listing.truncated,
  };
  const target = foreignTarget(policy.config.payload.foreignTargets, source.label);
  if (!target) {
    log.info('foreign medium reported, not applied', { ...about, rule: 'payload.foreign_targets has no directory for this label' });
    return { ...event, state: S.PAYLOAD_REPORTED };
  }
  const targetDir = normalize(Buffer.from(target));
  const dest = (f: Listed) => normalize(Buffer.concat([targetDir, Buffer.from('/'), f.rel]));
  // One record per label and directory; its hash covers the directory and every file's path and content.
  const record = { id: `foreign-${crypto().createHash('sha256').update(`${source.label.trim().toUpperCase()}\0${target}`).digest('hex').slice(0, 16)}`, availability: 'permanent' as const, contentSha256: '' };
  const applied = { ...event, targetDir };
  try {
    if (listing.truncated) throw new PortholeError(E.ERROR_CODE_RESOURCE_EXHAUSTED, `the medium holds more than ${MAX_LISTED_FILES} files (or names); it is not applied`);
    if (listing.irregular) throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, `${showPath(listing.irregular)} on the medium is neither a file nor a directory; it is not applied`);
    policy.requireEnabled('file_write');
    const content = crypto().createHash('sha256').update(targetDir);
    for (const f of listing.files) {
      policy.checkPath('file_write', dest(f));
      policy.checkSize(f.size);
      content.update(f.rel).update('\0').update(await sha256File(f.abs));
    }
    record.contentSha256 = content.digest('hex');
  } catch (err) {
    const e = PortholeError.from(err);
    log.warn('foreign medium refused', { ...about, target, error: e.message, rule: e.rule, path: e.path ? showPath(e.path) : undefined });
    return { ...applied, state: S.PAYLOAD_REFUSED, error: e.toProto() };
  }
  if (alreadyApplied(await readRecord(opts.stateDir, record.id), record, opts.bootId)) {
    log.info('foreign medium skipped: applied before', { ...about, target, contentSha256: record.contentSha256 });
    return { ...applied, state: S.PAYLOAD_SKIPPED, contentSha256: record.contentSha256 };
  }
  const files: v1.PayloadFileResult.$Properties[] = [];
  for (const [i, f] of listing.files.entries()) {
    const path = dest(f);
    try {
      const { result } = await writeFileAtomic(opts.files, `foreign:${record.id}:${crypto().randomUUID()}`, {
        path, size: f.size, sizeKnown: true, owner: { numeric: 0 }, group: { numeric: 0 }, mode: FOREIGN_FILE_MODE, hasMode: true,
        overwrite: v1.OverwritePolicy.OVERWRITE_REPLACE, mkdirParents: true,
      }, chunksOf(f.abs));
      files.push({ path, sha256: result.sha256, size: result.size });
      log.info('payload file written', { device: source.device, label: source.label, path: showPath(path), size: result.size, sha256: result.sha256, uid: result.uid, gid: result.gid, mode: `0${(result.mode ?? 0).toString(8)}` });
    } catch (err) {
      const e = PortholeError.from(err, `writing ${showPath(path)}`);
      files.push({ path, error: e.toProto() });
      log.warn('foreign medium failed', { ...about, target, path: showPath(path), error: e.message, rule: e.rule, filesWritten: i });
      return { ...applied, state: S.PAYLOAD_FAILED, files, error: e.toProto(), contentSha256: record.contentSha256 };
    }
  }
  await writeRecord(opts.stateDir, record, opts.bootId);
  log.info('foreign medium applied', { ...about, target, contentSha256: record.contentSha256 });
  return { ...applied, state: S.PAYLOAD_APPLIED, files, contentSha256: record.contentSha256 };
}
