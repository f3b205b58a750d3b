import { execFile } from 'node:child_process';
import { open } from 'node:fs/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** What the format check found; `ok: false` carries the reason the image was refused. */
export interface FormatReport {
  ok: boolean;
  format?: 'raw' | 'qcow2';
  /** Extra content hint for raw images (an ISO 9660 file system). */
  content?: 'iso9660';
  virtualSize?: number;
  reason?: string;
}

export interface CheckLimits {
  /** Largest virtual size the target accepts. */
  maxVirtualSize: number;
  /** The format the target expects; undefined accepts raw and qcow2. */
  expectFormat?: 'raw' | 'qcow2';
}

const PROBE = 4096;

/**
 * Formats qemu would detect by probing. Only raw and qcow2 are accepted: the others are refused by name here, before
 * qemu-img ever opens the file, because some (vmdk descriptors, qcow v1, qed) point at other host files.
 */
function sniffOther(head: Buffer, tail: Buffer): string | undefined {
  const at = (off: number, s: string) => head.subarray(off, off + s.length).equals(Buffer.from(s, 'latin1'));
  if (at(0, 'QED\0')) return 'qed';
  if (at(0, 'KDMV') || at(0, 'COWD')) return 'vmdk';
  if (head.length >= 0x44 && head.readUInt32LE(0x40) === 0xbeda107f) return 'vdi';
  if (at(0, 'vhdxfile')) return 'vhdx';
  if (at(0, 'conectix')) return 'vpc';
  if (at(0, 'WithoutFreeSpace') || at(0, 'WithouFreSpacExt')) return 'parallels';
  if (at(0, 'Bochs Virtual HD Image')) return 'bochs';
  if (at(0, '#!/bin/sh\n#V2.0 Format')) return 'cloop';
  if (at(0, 'LUKS\xba\xbe')) return 'luks';
  if (tail.subarray(0, 4).toString('latin1') === 'koly') return 'dmg';
  // qemu's vmdk probe accepts a text descriptor: any non-comment line "version=N" in the first 2 KiB.
  const text = head.subarray(0, 2048).toString('latin1').split('\n');
  if (text.some((l) => /^\s*version=\d\s*$/.test(l.replace(/\r$/, '')) && !l.trimStart().startsWith('#'))) return 'vmdk';
  return undefined;
}

async function readEdges(path: string): Promise<{ head: Buffer; tail: Buffer; size: number }> {
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    const head = Buffer.alloc(Math.min(PROBE, size));
    await fh.read(head, 0, head.length, 0);
    const tail = Buffer.alloc(Math.min(512, size));
    await fh.read(tail, 0, tail.length, size - tail.length);
    return { head, tail, size };
  } finally {
    await fh.close();
  }
}

/** Refuses qcow2 headers that make qemu open other files: a backing file or an external data file. */
function qcow2HeaderProblem(head: Buffer): string | undefined {
  if (head.length < 72) return 'qcow2 header is truncated';
  const version = head.readUInt32BE(4);
  if (version < 2) return `qcow version ${version} is not accepted (qcow2 v2/v3 only)`;
  if (head.readBigUInt64BE(8) !== 0n) return 'qcow2 image has a backing file';
  if (version >= 3) {
    if (head.length < 80) return 'qcow2 v3 header is truncated';
    const incompatible = head.readBigUInt64BE(72);
    if (incompatible & 4n) return 'qcow2 image has an external data file';
  }
  return undefined;
}

interface QemuImgInfo {
  format?: string;
  'virtual-size'?: number;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'format-specific'?: { type?: string; data?: { 'data-file'?: string } };
}

/**
 * The quick check: our own sniff of the first 4 KiB and the last 512 bytes, with no qemu involved. It finds every
 * reference to another host file (qcow2 backing file or external data file, vmdk descriptors, other formats) and the
 * virtual size a qcow2 header declares. Run on every flush of an image written in place; definitive when it refuses.
 */
export async function checkHeader(path: string, limits: CheckLimits): Promise<FormatReport> {
  const { head, tail, size } = await readEdges(path);
  const isQcow = head.subarray(0, 4).equals(Buffer.from([0x51, 0x46, 0x49, 0xfb]));
  if (isQcow) {
    const problem = qcow2HeaderProblem(head);
    if (problem) return { ok: false, format: 'qcow2', reason: problem };
  } else {
    const other = sniffOther(head, tail);
    if (other) return { ok: false, reason: `${other} images are not accepted (raw and qcow2 only)` };
  }
  const format = isQcow ? 'qcow2' : 'raw';
  const virtualSize = isQcow ? Number(head.readBigUInt64BE(24)) : size;
  return sizeAndFormat(format, virtualSize, limits);
}

function sizeAndFormat(format: 'raw' | 'qcow2', virtualSize: number, limits: CheckLimits): FormatReport {
  if (limits.expectFormat && limits.expectFormat !== format) {
    return { ok: false, format, virtualSize, reason: `expected a ${limits.expectFormat} image, found ${format}` };
  }
  if (virtualSize > limits.maxVirtualSize) {
    return { ok: false, format, virtualSize, reason: `virtual size ${virtualSize} exceeds the target's ${limits.maxVirtualSize} bytes` };
  }
  return { ok: true, format, virtualSize };
}

/**
 * The full format check before an image may be used: the quick check first (so no unsafe image reaches qemu), then
 * `qemu-img info --output=json` with the detected format to confirm it and read the virtual size.
 */
export async function checkImage(path: string, limits: CheckLimits): Promise<FormatReport> {
  const quick = await checkHeader(path, limits);
  if (!quick.ok) return quick;
  const format = quick.format as 'raw' | 'qcow2';
  let info: QemuImgInfo;
  try {
    const { stdout } = await run('qemu-img', ['info', '-f', format, '--output=json', path], { maxBuffer: 1 << 20 });
    info = JSON.parse(stdout) as QemuImgInfo;
  } catch (err) {
    // qemu-img names the file in its message: keep only what follows the path.
    const msg = ((err as { stderr?: string }).stderr || (err as Error).message).trim().split('\n').pop() ?? '';
    return { ok: false, format, reason: `qemu-img info failed: ${msg.split(path).join('<image>')}` };
  }
  if (info['backing-filename'] || info['full-backing-filename']) return { ok: false, format, reason: 'image has a backing file' };
  if (info['format-specific']?.data?.['data-file']) return { ok: false, format, reason: 'image has an external data file' };
  // qemu-img rounds a raw image's virtual size up to 512 bytes; the guest sees the file size.
  const virtualSize = format === 'raw' ? (quick.virtualSize as number) : Number(info['virtual-size']);
  const report = sizeAndFormat(format, virtualSize, limits);
  if (!report.ok) return report;
  const content = format === 'raw' && virtualSize >= 0x8006 ? await isoSignature(path) : undefined;
  return { ...report, ...(content ? { content } : {}) };
}

async function isoSignature(path: string): Promise<'iso9660' | undefined> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(5);
    await fh.read(b, 0, 5, 0x8001);
    return b.toString('latin1') === 'CD001' ? 'iso9660' : undefined;
  } finally {
    await fh.close();
  }
}
