// Payload media laid out as oVirt's vdsm makes them (lib/vdsm/mkimage.py): each
// file at its own path on the medium, no manifest, an optional volume label
// ("config-2" for a cloud-init config drive). vdsm runs `mkisofs -R -J [-V label]`
// over a directory of the files (written 0640), or `mkfs.msdos -C img 1440
// [-n label]` and copies them onto the floppy. What reads such a medium is the
// guest's own software (cloud-init, sysprep); the Porthole agent reports it and
// applies it only where the owner's config maps its label to a directory.
import { chmod, mkdir } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { BuildOptions, FLOPPY_CAPACITY_BYTES, floppyBytesNeeded, PayloadTooLargeError, stageContent, writeFloppy, writeImage } from './build';
import { isPayloadLabel, MediumKind } from './manifest';
import { EntryContent, normalizeContent, PayloadSpecError } from './spec';
import { requireTool, runTool } from './tools';

/** The mode vdsm gives every payload file (they may hold secrets). */
export const VDSM_FILE_MODE = 0o640;
/** Bytes of one name on the medium (Rock Ridge and VFAT long names both stop at 255). */
const MAX_NAME_BYTES = 255;

export interface MediumFile {
  /** Where the file goes on the medium, e.g. "openstack/latest/user_data" (a leading "/" is dropped, as vdsm's names have none). */
  path: string;
  content: EntryContent;
}

export interface VdsmBuildOptions extends BuildOptions {
  /** Volume label: ISO volume id (up to 32 characters) or FAT label (up to 11). */
  label?: string;
}

export interface VdsmBuildResult {
  path: string;
  medium: MediumKind;
  label?: string;
  imageBytes: number;
  tool: string;
  files: Array<{ path: string; size: number; sha256: string }>;
}

/** The medium path as it will be written, or an error naming what is wrong with it. */
export function checkMediumPath(path: string): string {
  const rel = path.replace(/^\/+/, '');
  const parts = rel.split('/');
  if (rel === '' || parts.some((p) => p === '' || p === '.' || p === '..')) {
    throw new PayloadSpecError(`medium path ${JSON.stringify(path)}: use names separated by single "/", without "." or ".." (e.g. openstack/latest/user_data)`);
  }
  if (rel.includes('\0')) throw new PayloadSpecError(`medium path ${JSON.stringify(path)} contains a NUL byte`);
  const long = parts.find((p) => Buffer.byteLength(p) > MAX_NAME_BYTES);
  if (long) throw new PayloadSpecError(`medium path ${JSON.stringify(path)}: the name ${JSON.stringify(long)} is longer than ${MAX_NAME_BYTES} bytes`);
  return rel;
}

/** Labels the media's file systems take; a Porthole label is refused (the agent would look for a manifest). */
export function checkVolumeLabel(medium: MediumKind, label: string): void {
  const [max, pattern] = medium === 'cd' ? [32, /^[A-Za-z0-9_ .-]+$/] : [11, /^[A-Za-z0-9_ -]+$/];
  if (label.length > max || !pattern.test(label) || label.trim() === '') {
    throw new PayloadSpecError(`label ${JSON.stringify(label)}: a ${medium === 'cd' ? 'CD volume id' : 'FAT label'} is 1 to ${max} of A-Z a-z 0-9 _ -${medium === 'cd' ? ' .' : ''} and space`);
  }
  if (isPayloadLabel(label)) throw new PayloadSpecError(`label ${JSON.stringify(label)}: labels starting with PORTHOLE are Porthole's own media (FORMAT.md)`);
}

/** Builds a CD or floppy with each file at its own path, as vdsm does; written atomically to outPath (mode 0600). */
export async function buildVdsmMedium(medium: MediumKind, files: MediumFile[], outPath: string, options: VdsmBuildOptions = {}): Promise<VdsmBuildResult> {
  if (medium !== 'cd' && medium !== 'floppy') throw new Error(`medium must be "cd" or "floppy", got ${JSON.stringify(medium)}`);
  if (options.label !== undefined) checkVolumeLabel(medium, options.label);
  if (files.length === 0) throw new PayloadSpecError('no files given');
  const entries = files.map((f) => {
    const path = checkMediumPath(f.path);
    return { path, ...normalizeContent(f.content, `medium file ${JSON.stringify(path)}`) };
  });
  const dirs = new Set(entries.flatMap((e) => e.path.split('/').slice(0, -1).map((_, i, a) => a.slice(0, i + 1).join('/'))));
  const seen = new Set<string>();
  for (const e of entries) {
    if (seen.has(e.path)) throw new PayloadSpecError(`medium path ${JSON.stringify(e.path)} given twice`);
    if (dirs.has(e.path)) throw new PayloadSpecError(`medium path ${JSON.stringify(e.path)} is both a file and a directory`);
    seen.add(e.path);
  }
  const isoTool = medium === 'cd' ? requireTool(options.isoTool ? [options.isoTool] : ['xorriso', 'genisoimage'], options) : undefined;
  const fatTools = medium === 'floppy' ? { mkfs: requireTool(['mkfs.vfat', 'mkfs.fat'], options), mcopy: requireTool(['mcopy'], options) } : undefined;
  if (medium === 'floppy') {
    // Each directory takes at least one cluster of the data area.
    const needed = floppyBytesNeeded(entries.map((e) => e.size), 0) + dirs.size * 512;
    if (needed > FLOPPY_CAPACITY_BYTES) throw new PayloadTooLargeError(needed, FLOPPY_CAPACITY_BYTES);
  }

  const hashes: string[] = [];
  const { tool, imageBytes } = await writeImage(outPath, options.tmpDir, async (root) => {
    for (const e of entries) {
      await mkdir(dirname(join(root, e.path)), { recursive: true, mode: 0o700 });
      hashes.push(await stageContent(e, join(root, e.path)));
    }
  }, async (root, image) => {
    if (isoTool !== undefined && basename(isoTool) === 'genisoimage') {
      // genisoimage takes Rock Ridge modes from the tree: 0640 files, 0755 directories.
      for (const d of ['', ...dirs]) await chmod(join(root, d), 0o755);
      for (const e of entries) await chmod(join(root, e.path), VDSM_FILE_MODE);
      await runTool(isoTool, ['-quiet', '-input-charset', 'utf-8', '-R', '-J', '-joliet-long', '-uid', '0', '-gid', '0',
        ...(options.label ? ['-V', options.label] : []), '-o', image, root]);
    } else if (isoTool !== undefined) {
      await runTool(isoTool, [
        '-abort_on', 'FAILURE', '-report_about', 'SORRY', '-outdev', `stdio:${image}`,
        ...(options.label ? ['-volid', options.label] : []), '-joliet', 'on', '-rockridge', 'on', '-map', root, '/',
        '-chown_r', '0', '/', '--', '-chgrp_r', '0', '/', '--', '-chmod_r', '0755', '/', '--',
        '-find', '/', '-type', 'f', '-exec', 'chmod', VDSM_FILE_MODE.toString(8).padStart(4, '0'), '--',
        '-commit', '-end',
      ]);
    } else {
      await writeFloppy(fatTools!.mkfs, fatTools!.mcopy, root, image, { label: options.label });
    }
    return isoTool ?? fatTools!.mkfs;
  });
  return {
    path: outPath, medium, label: options.label, imageBytes, tool,
    files: entries.map((e, i) => ({ path: e.path, size: e.size, sha256: hashes[i] })),
  };
}
