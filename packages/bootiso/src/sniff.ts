/** Offset of "CD001" in an ISO 9660 image: the primary volume descriptor sits in sector 16 (16 × 2048), after its type byte. */
export const ISO9660_MAGIC_OFFSET = 32769;
/** Bytes the preflight reads from the start: the first 17 sectors, enough for the volume descriptor. */
export const ISO9660_HEAD_BYTES = 16 * 2048 + 2048;

export interface Sniffed {
  iso: boolean;
  /** Human description, e.g. "an ISO 9660 image", "a qcow2 disk image", "an HTML page". */
  looksLike: string;
  /** ISO volume identifier when iso. */
  volumeId?: string;
}

function startsWith(buf: Buffer, at: number, magic: string | number[]): boolean {
  const m = typeof magic === 'string' ? Buffer.from(magic, 'latin1') : Buffer.from(magic);
  return m.equals(buf.subarray(at, at + m.length));
}

/** Says what the first bytes of an image look like; `head` is the image from offset 0 (ideally ISO9660_HEAD_BYTES long). */
export function sniffImage(head: Buffer): Sniffed {
  if (startsWith(head, ISO9660_MAGIC_OFFSET, 'CD001')) {
    const volumeId = head.subarray(32768 + 40, 32768 + 72).toString('latin1').trim();
    return { iso: true, looksLike: 'an ISO 9660 image', volumeId };
  }
  const checks: Array<[number, string | number[], string]> = [
    [0, 'QFI\xfb', 'a qcow2 disk image'],
    [0, 'KDMV', 'a VMDK disk image'],
    [0, 'conectix', 'a VHD disk image'],
    [0, 'vhdxfile', 'a VHDX disk image'],
    [64, [0x7f, 0x10, 0xda, 0xbe], 'a VirtualBox VDI disk image'],
    [0, [0x1f, 0x8b], 'gzip-compressed data (decompress it first)'],
    [0, [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], 'xz-compressed data (decompress it first)'],
    [0, 'BZh', 'bzip2-compressed data (decompress it first)'],
    [0, [0x28, 0xb5, 0x2f, 0xfd], 'zstd-compressed data (decompress it first)'],
    [0, 'PK\x03\x04', 'a zip archive'],
    [257, 'ustar', 'a tar archive'],
    [ISO9660_MAGIC_OFFSET, 'BEA01', 'a UDF image without an ISO 9660 volume descriptor'],
    [512, 'EFI PART', 'a GPT-partitioned disk image, not an ISO 9660 image'],
    [510, [0x55, 0xaa], 'a disk image with an MBR boot sector, not an ISO 9660 image'],
  ];
  for (const [at, magic, what] of checks) if (startsWith(head, at, magic)) return { iso: false, looksLike: what };
  const text = head.subarray(0, 1024).toString('latin1').trimStart().toLowerCase();
  if (text.startsWith('<!doctype html') || text.startsWith('<html')) {
    return { iso: false, looksLike: 'an HTML page (often an error or login page)' };
  }
  if (text.startsWith('<?xml') || text.startsWith('<')) return { iso: false, looksLike: 'an XML/markup document' };
  if (text.startsWith('{') || text.startsWith('[')) return { iso: false, looksLike: 'a JSON document' };
  if (head.length === 0) return { iso: false, looksLike: 'empty' };
  const printable = head.subarray(0, 1024).every((b) => b === 9 || b === 10 || b === 13 || (b >= 32 && b < 127));
  if (printable) return { iso: false, looksLike: 'plain text' };
  if (head.length < ISO9660_MAGIC_OFFSET + 5) {
    return { iso: false, looksLike: `unrecognised data only ${head.length} bytes long (too short for ISO 9660)` };
  }
  return { iso: false, looksLike: 'unrecognised binary data' };
}
