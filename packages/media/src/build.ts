// Builds payload media: an ISO 9660 CD (Rock Ridge + Joliet) with xorriso or
// genisoimage, or a 1.44 MB FAT floppy with mkfs.vfat + mtools. Layout and
// manifest are specified in FORMAT.md.
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, mkdir, mkdtemp, open, readdir, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, basename, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  ManifestFile,
  ManifestPayload,
  MANIFEST_FILE_NAME,
  MEDIUM_FILES_DIR,
  MediumKind,
  PAYLOAD_LABEL_PREFIX,
  PayloadManifest,
  payloadContentSha256,
  readablePath,
  serializePayloadManifest,
} from './manifest';
import { NormalizedEntry, NormalizedPayload, normalizePayloads, PayloadSpec } from './spec';
import { requireTool, runTool, ToolOptions } from './tools';

export const FLOPPY_IMAGE_BYTES = 1474560;
const FLOPPY_CLUSTER_BYTES = 512;
/** Data clusters of a 1.44 MB FAT12 floppy as mkfs.vfat makes it (2880 sectors - boot - 2 FATs - root dir). */
const FLOPPY_DATA_CLUSTERS = 2847;
export const FLOPPY_CAPACITY_BYTES = FLOPPY_DATA_CLUSTERS * FLOPPY_CLUSTER_BYTES;
const FAT_DIR_ENTRY_BYTES = 32;
const DEFAULT_MEDIUM_MODE = 0o644;

export class PayloadTooLargeError extends Error {
  constructor(
    readonly needed: number,
    readonly capacity: number,
  ) {
    super(`payload does not fit on a 1.44 MB floppy: it needs ${needed} bytes, the floppy holds ${capacity} bytes (use a CD instead)`);
    this.name = 'PayloadTooLargeError';
  }
}

export interface BuildOptions extends ToolOptions {
  /** Force one ISO tool; by default xorriso, else genisoimage. */
  isoTool?: 'xorriso' | 'genisoimage';
  /** Where the staging directory goes (default: the OS temp directory). */
  tmpDir?: string;
}

export interface BuildResult {
  path: string;
  medium: MediumKind;
  /** Volume label (ISO volume id, or FAT label). */
  label: string;
  /** FAT volume serial as "XXXX-XXXX" (floppy only). */
  serial?: string;
  imageBytes: number;
  /** The tool that wrote the file system. */
  tool: string;
  manifest: PayloadManifest;
}

/** The volume label a medium gets: ISO volume ids have room for part of the manifest hash, FAT labels (11 chars) do not. */
export function payloadVolumeLabel(medium: MediumKind, manifestSha256: string): string {
  return medium === 'cd' ? `${PAYLOAD_LABEL_PREFIX}_${manifestSha256.slice(0, 8).toUpperCase()}` : PAYLOAD_LABEL_PREFIX;
}

function clusters(bytes: number): number {
  return Math.ceil(bytes / FLOPPY_CLUSTER_BYTES);
}

/** Bytes of the floppy's data area the payload takes: manifest, the files directory and every file, in whole clusters. */
export function floppyBytesNeeded(fileSizes: number[], manifestBytes: number): number {
  const dir = clusters((fileSizes.length + 2) * FAT_DIR_ENTRY_BYTES);
  const total = clusters(manifestBytes) + dir + fileSizes.reduce((sum, s) => sum + clusters(s), 0);
  return total * FLOPPY_CLUSTER_BYTES;
}

function checkFloppyFits(fileSizes: number[], manifestBytes: number): void {
  const needed = floppyBytesNeeded(fileSizes, manifestBytes);
  if (needed > FLOPPY_CAPACITY_BYTES) throw new PayloadTooLargeError(needed, FLOPPY_CAPACITY_BYTES);
}

/** Writes one entry's content to the staging tree and returns its sha256, checking a local file did not change size meanwhile. */
export async function stageContent(entry: Pick<NormalizedEntry, 'source' | 'size'>, dest: string): Promise<string> {
  const hash = createHash('sha256');
  if ('data' in entry.source) {
    await writeFile(dest, entry.source.data, { mode: 0o600, flag: 'wx' });
    return hash.update(entry.source.data).digest('hex');
  }
  let copied = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      copied += chunk.length;
      done(null, chunk);
    },
  });
  await pipeline(createReadStream(entry.source.localFile), tap, createWriteStream(dest, { mode: 0o600, flags: 'wx' }));
  if (copied !== entry.size) {
    throw new Error(`local file ${entry.source.localFile} changed while the payload was built (${entry.size} bytes, then ${copied})`);
  }
  return hash.digest('hex');
}

/** Stages every payload's files under root/files/NNNN, returns the manifest payloads. */
async function stagePayloads(payloads: NormalizedPayload[], root: string): Promise<Array<Omit<ManifestPayload, 'contentSha256'>>> {
  await mkdir(join(root, MEDIUM_FILES_DIR), { mode: 0o700 });
  let n = 0;
  const out: Array<Omit<ManifestPayload, 'contentSha256'>> = [];
  for (const p of payloads) {
    const files: ManifestFile[] = [];
    for (const e of p.entries) {
      n += 1;
      const source = `${MEDIUM_FILES_DIR}/${String(n).padStart(4, '0')}`;
      const sha256 = await stageContent(e, join(root, source));
      files.push({ path: e.path, pathText: readablePath(e.path), source, size: e.size, sha256, owner: e.owner, group: e.group, mode: e.mode });
    }
    const body = { id: p.id ?? '', availability: p.availability, files, commands: p.commands.map((argv) => ({ argv })) };
    // Same content, same id: rebuilding an unchanged payload does not make the agent apply it again.
    if (p.id === undefined) body.id = `p-${payloadContentSha256(body).slice(0, 16)}`;
    out.push(body);
  }
  return out;
}

async function writeIsoXorriso(tool: string, root: string, out: string, label: string, manifest: PayloadManifest): Promise<void> {
  const modes = manifest.payloads.flatMap((p) => p.files.map((f) => ['-chmod', (f.mode ?? DEFAULT_MEDIUM_MODE).toString(8).padStart(4, '0'), `/${f.source}`, '--']));
  await runTool(tool, [
    '-abort_on', 'FAILURE', '-report_about', 'SORRY',
    '-outdev', `stdio:${out}`,
    '-volid', label, '-joliet', 'on', '-rockridge', 'on',
    '-map', root, '/',
    // Host ownership and staging modes mean nothing in the guest: normalize them, then give each file its mode.
    '-chown_r', '0', '/', '--', '-chgrp_r', '0', '/', '--',
    '-chmod_r', '0755', '/', '--', '-chmod', '0644', `/${MANIFEST_FILE_NAME}`, '--',
    ...modes.flat(),
    '-commit', '-end',
  ]);
}

async function writeIsoGenisoimage(tool: string, root: string, out: string, label: string, manifest: PayloadManifest): Promise<void> {
  // genisoimage takes Rock Ridge modes from the tree; owner read is kept so the tree stays readable to a non-root builder.
  await chmod(root, 0o755);
  await chmod(join(root, MEDIUM_FILES_DIR), 0o755);
  await chmod(join(root, MANIFEST_FILE_NAME), 0o644);
  for (const f of manifest.payloads.flatMap((p) => p.files)) await chmod(join(root, f.source), (f.mode ?? DEFAULT_MEDIUM_MODE) | 0o400);
  await runTool(tool, ['-quiet', '-input-charset', 'utf-8', '-R', '-J', '-joliet-long', '-uid', '0', '-gid', '0', '-V', label, '-o', out, root]);
}

/** A 1.44 MB FAT floppy holding the entries of `root` (its top-level names) at the floppy's root. */
export async function writeFloppy(mkfs: string, mcopy: string, root: string, out: string, fs: { label?: string; serial?: string }): Promise<void> {
  const fh = await open(out, 'r+');
  try {
    await fh.truncate(FLOPPY_IMAGE_BYTES);
  } finally {
    await fh.close();
  }
  await runTool(mkfs, [...(fs.label ? ['-n', fs.label] : []), ...(fs.serial ? ['-i', fs.serial] : []), out]);
  const top = (await readdir(root)).sort().map((name) => join(root, name));
  // -D o: never prompt on a name clash (there is none on a fresh file system, and a prompt would hang).
  if (top.length) await runTool(mcopy, ['-i', out, '-s', '-Q', '-D', 'o', ...top, '::/'], { MTOOLS_SKIP_CHECK: '1' });
}

/**
 * The image-writing frame every build shares: `stage` fills a private staging
 * root (0700, in a temporary directory), then `write` makes the file system from
 * it into a temporary file beside outPath, which is renamed to outPath (mode 0600)
 * once complete. A failure leaves nothing behind. Returns the tool `write` named
 * and the image's size.
 */
export async function writeImage(
  outPath: string,
  tmpDir: string | undefined,
  stage: (root: string) => Promise<void>,
  write: (root: string, image: string) => Promise<string>,
): Promise<{ tool: string; imageBytes: number }> {
  const staging = await mkdtemp(join(tmpDir ?? tmpdir(), 'porthole-payload-'));
  const tmpOut = join(dirname(outPath), `.${basename(outPath)}.${randomBytes(6).toString('hex')}.tmp`);
  let created = false;
  try {
    // The staging directory (0700) keeps the medium tree private even when the tree itself gets readable modes.
    const root = join(staging, 'root');
    await mkdir(root, { mode: 0o700 });
    await stage(root);
    try {
      await (await open(tmpOut, 'wx', 0o600)).close();
      created = true;
    } catch (e) {
      throw new Error(`cannot write the image in ${dirname(outPath)}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    }
    const tool = await write(root, tmpOut);
    // A tool may have recreated the file with its own mode; the image may hold secrets.
    await chmod(tmpOut, 0o600);
    const { size } = await stat(tmpOut);
    await rename(tmpOut, outPath);
    return { tool: basename(tool), imageBytes: size };
  } catch (err) {
    if (created) await unlink(tmpOut).catch(() => undefined);
    throw err;
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/**
 * Builds one medium holding all the given payloads and writes it to outPath
 * (replaced atomically, mode 0600). A floppy that would not fit is refused with
 * its size before anything is written.
 */
export async function buildPayloadMedium(
  medium: MediumKind,
  specs: PayloadSpec | PayloadSpec[],
  outPath: string,
  options: BuildOptions = {},
): Promise<BuildResult> {
  if (medium !== 'cd' && medium !== 'floppy') throw new Error(`medium must be "cd" or "floppy", got ${JSON.stringify(medium)}`);
  const payloads = normalizePayloads(Array.isArray(specs) ? specs : [specs]);
  // Tools are looked up first so a missing one is reported before any work.
  const isoTool = medium === 'cd' ? requireTool(options.isoTool ? [options.isoTool] : ['xorriso', 'genisoimage'], options) : undefined;
  const fatTools = medium === 'floppy' ? { mkfs: requireTool(['mkfs.vfat', 'mkfs.fat'], options), mcopy: requireTool(['mcopy'], options) } : undefined;
  const sizes = payloads.flatMap((p) => p.entries.map((e) => e.size));
  if (medium === 'floppy') checkFloppyFits(sizes, 0);

  let manifest: PayloadManifest | undefined;
  const { tool, imageBytes } = await writeImage(outPath, options.tmpDir, async (root) => {
    const staged = serializePayloadManifest({ medium, payloads: await stagePayloads(payloads, root) });
    manifest = staged.manifest;
    await writeFile(join(root, MANIFEST_FILE_NAME), staged.text, { mode: 0o600, flag: 'wx' });
    if (medium === 'floppy') checkFloppyFits(sizes, Buffer.byteLength(staged.text));
  }, async (root, image) => {
    const label = payloadVolumeLabel(medium, manifest!.manifestSha256);
    if (isoTool !== undefined) {
      const write = basename(isoTool) === 'genisoimage' ? writeIsoGenisoimage : writeIsoXorriso;
      await write(isoTool, root, image, label, manifest!);
      return isoTool;
    }
    await writeFloppy(fatTools!.mkfs, fatTools!.mcopy, root, image, { label: PAYLOAD_LABEL_PREFIX, serial: manifest!.manifestSha256.slice(0, 8) });
    return fatTools!.mkfs;
  });
  const serial = manifest!.manifestSha256.slice(0, 8);
  return {
    path: outPath,
    medium,
    label: payloadVolumeLabel(medium, manifest!.manifestSha256),
    serial: medium === 'floppy' ? `${serial.slice(0, 4)}-${serial.slice(4)}`.toUpperCase() : undefined,
    imageBytes,
    tool,
    manifest: manifest!,
  };
}

export function buildIsoPayload(specs: PayloadSpec | PayloadSpec[], outPath: string, options?: BuildOptions): Promise<BuildResult> {
  return buildPayloadMedium('cd', specs, outPath, options);
}

export function buildFloppyPayload(specs: PayloadSpec | PayloadSpec[], outPath: string, options?: BuildOptions): Promise<BuildResult> {
  return buildPayloadMedium('floppy', specs, outPath, options);
}
