// Payload media on Windows: CD and floppy drives are drive letters, and the volume label
// Windows reads from the medium tells a Porthole one. Asked of kernel32 through koffi
// (shipped beside the agent), not by parsing `vol` or `wmic` output, which is translated
// into the system's language (and Wine's `vol` takes no drive argument).
import { loadKoffi } from '@porthole/transport';

interface Kernel32 {
  GetLogicalDrives(): number;
  GetDriveTypeW(root: string): number;
  GetVolumeInformationW(root: string, label: Buffer, labelSize: number, serial: number[], maxName: number[], flags: number[], fs: Buffer, fsSize: number): number;
}

let kernel32: Kernel32 | undefined;
function api(): Kernel32 {
  if (kernel32) return kernel32;
  const lib = loadKoffi().load('kernel32.dll');
  kernel32 = {
    GetLogicalDrives: lib.func('uint32 __stdcall GetLogicalDrives()'),
    GetDriveTypeW: lib.func('uint32 __stdcall GetDriveTypeW(str16 root)'),
    GetVolumeInformationW: lib.func('int __stdcall GetVolumeInformationW(str16 root, void *label, uint32 labelSize, _Out_ uint32 *serial, _Out_ uint32 *maxName, _Out_ uint32 *flags, void *fs, uint32 fsSize)'),
  } as unknown as Kernel32;
  return kernel32;
}

const DRIVE_REMOVABLE = 2;
const DRIVE_CDROM = 5;
/** MAX_PATH + 1 UTF-16 units, as Windows documents for both buffers. */
const NAME_UNITS = 261;

export interface WindowsVolume {
  /** "D:" */
  drive: string;
  /** "D:\" */
  root: string;
  label: string;
  /** The file system's name as Windows gives it: CDFS, UDF, FAT… */
  fsType: string;
  /** Changes when another medium is in the drive (its serial number and label). */
  signature: string;
}

const utf16 = (b: Buffer) => {
  const s = b.toString('utf16le');
  const end = s.indexOf('\0');
  return end < 0 ? s : s.slice(0, end);
};

/**
 * The media in the CD and floppy drives (removable drives too: a USB stick counts as a floppy).
 * An empty drive fails GetVolumeInformationW (not ready) and is left out; no "insert a disk"
 * box appears, since Node runs with SEM_FAILCRITICALERRORS set.
 */
export function removableVolumes(): WindowsVolume[] {
  const k = api();
  const mask = k.GetLogicalDrives();
  const volumes: WindowsVolume[] = [];
  for (let i = 0; i < 26; i++) {
    if (!(mask & (1 << i))) continue;
    const drive = `${String.fromCharCode(65 + i)}:`;
    const root = `${drive}\\`;
    const type = k.GetDriveTypeW(root);
    if (type !== DRIVE_CDROM && type !== DRIVE_REMOVABLE) continue;
    const label = Buffer.alloc(NAME_UNITS * 2);
    const fs = Buffer.alloc(NAME_UNITS * 2);
    const serial = [0];
    if (!k.GetVolumeInformationW(root, label, NAME_UNITS, serial, [0], [0], fs, NAME_UNITS)) continue;
    const name = utf16(label).trim();
    volumes.push({ drive, root, label: name, fsType: utf16(fs), signature: `${serial[0].toString(16)}:${name}` });
  }
  return volumes;
}
