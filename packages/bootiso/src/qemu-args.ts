import { validateIsoUrl } from './url';

export interface QemuArgsOptions {
  /** file.sslverify=off: boot even though the certificate does not verify. */
  insecure?: boolean;
  /** Guest-side controller: ide-cd (PIIX IDE on pc, AHCI on q35) or scsi-cd on a virtio-scsi controller of its own. */
  bus?: 'ide' | 'scsi';
  /** Id prefix for the nodes and devices (default "bootiso"). */
  id?: string;
  /** Seconds QEMU waits for one HTTP request before the guest sees an I/O error (QEMU's default is 5). */
  timeoutSec?: number;
  /** Bytes QEMU reads ahead per request (QEMU's default is 256 KiB); more helps on high-latency links. */
  readaheadBytes?: number;
  /** An existing QEMU command line whose bootindex values must move up by one; returned as shiftedArgs. */
  existingArgs?: string[];
}

export interface QemuArgsResult {
  /** -blockdev form (what current libvirt generates): https node, raw node on top, CD device with bootindex=0. */
  args: string[];
  /** The same as legacy -drive options (driver=raw,file.driver=https,…,media=cdrom). */
  driveArgs: string[];
  /** existingArgs with every bootindex=N turned into N+1 (absent when existingArgs was not given). */
  shiftedArgs?: string[];
  notes: string[];
}

/** QemuOpts syntax escapes a comma by doubling it. */
const optValue = (v: string) => v.replace(/,/g, ',,');

/** QEMU command-line arguments that attach the https ISO as a read-only CD-ROM that boots first (bootindex=0). */
export function qemuArgs(url: string, opts: QemuArgsOptions = {}): QemuArgsResult {
  validateIsoUrl(url);
  const id = opts.id ?? 'bootiso';
  if (!/^[A-Za-z][A-Za-z0-9_-]{0,30}$/.test(id)) throw new TypeError(`id "${id}" is not a valid QEMU id`);
  const curl: Record<string, unknown> = { driver: 'https', url, sslverify: !opts.insecure };
  if (opts.timeoutSec !== undefined) curl.timeout = opts.timeoutSec;
  if (opts.readaheadBytes !== undefined) curl.readahead = opts.readaheadBytes;
  const fileNode = `${id}-https`;
  const cd =
    opts.bus === 'scsi'
      ? ['-device', `virtio-scsi-pci,id=${id}-scsi`, '-device', `scsi-cd,bus=${id}-scsi.0,drive=${id},id=${id}-cd,bootindex=0`]
      : ['-device', `ide-cd,drive=${id},id=${id}-cd,bootindex=0`];
  const args = [
    '-blockdev',
    JSON.stringify({ ...curl, 'node-name': fileNode, 'read-only': true }),
    '-blockdev',
    JSON.stringify({ driver: 'raw', file: fileNode, 'node-name': id, 'read-only': true }),
    ...cd,
  ];
  const fileOpts = Object.entries(curl)
    .map(([k, v]) => `file.${k}=${typeof v === 'boolean' ? (v ? 'on' : 'off') : optValue(String(v))}`)
    .join(',');
  const driveArgs = ['-drive', `if=none,id=${id},driver=raw,${fileOpts},readonly=on,media=cdrom`, ...cd];

  const notes = [
    'bootindex=0 makes the CD-ROM boot first; every other device with bootindex=N must become N+1 ' +
      '(qemuArgs does this for existingArgs)',
    'QEMU checks the certificate against the system trust store only (SSL_CERT_FILE is ignored)',
    'a slow or lossy link shows up in the guest as I/O errors on the CD-ROM, not as a slow boot: raise file.timeout ' +
      'and file.readahead for distant servers, or copy the ISO close to the host',
  ];
  if (opts.insecure) notes.push('WARNING: file.sslverify=off — any machine on the path can substitute the boot image');
  let shiftedArgs: string[] | undefined;
  if (opts.existingArgs) {
    shiftedArgs = opts.existingArgs.map((a) =>
      a
        .replace(/(^|,)bootindex=(\d+)(?=,|$)/g, (_, pre: string, n: string) => `${pre}bootindex=${Number(n) + 1}`)
        .replace(/("bootindex"\s*:\s*)(\d+)/g, (_, pre: string, n: string) => `${pre}${Number(n) + 1}`),
    );
    const bootAt = opts.existingArgs.indexOf('-boot');
    const bootOpt = bootAt >= 0 ? opts.existingArgs[bootAt + 1] ?? '' : '';
    if (/(^|,)(order|once)=/.test(bootOpt) || /^[a-p]+$/.test(bootOpt)) {
      notes.push(`the existing "-boot ${bootOpt}" cannot be combined with bootindex; remove it and give devices bootindex values`);
    }
  }
  return { args, driveArgs, shiftedArgs, notes };
}
