// Files the test bed puts in every guest: the init script and the raw-port tool.

export const AGENT_PORT_NAME = 'org.porthole.agent.0';
export const QGA_PORT_NAME = 'org.qemu.guest_agent.0';
export const rawPortName = (n: number) => `org.porthole.raw.${n}`;
/** Where the guest has porthole-spawn, beside the agent, when the build made it. */
export const GUEST_SPAWN_HELPER = '/opt/porthole/porthole-spawn';

/** Load order matters: dependencies first (from `modinfo -F depends`). */
export const GUEST_MODULES = [
  'virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci', 'virtio_console',
  'scsi_common', 'scsi_mod', 'cdrom', 'sr_mod', 'virtio_scsi', 'libata', 'ata_piix', 'ata_generic', 'libahci', 'ahci',
  'isofs', 'floppy', 'fat', 'vfat', 'nls_cp437', 'nls_ascii',
];

/**
 * /init: what an init system would do for the agent — mount the kernel file
 * systems, load drivers, make the /dev/virtio-ports links udev would make, then
 * start and supervise the agent (restarting it when it exits), with its log on
 * the console. `@@...@@` markers are filled per boot.
 */
export const INIT_SCRIPT = `#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /run /tmp /var/lib /var/log /mnt; mount -t tmpfs run /run; mount -t tmpfs tmp /tmp
for m in $(cat /etc/testbed/modules); do insmod /lib/modules/$m.ko 2>/dev/null; done
hostname porthole-guest
mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do [ -e "$p/name" ] && ln -sf ../$(basename $p) /dev/virtio-ports/$(cat $p/name); done
echo "porthole-testbed: init reached, ports: $(ls /dev/virtio-ports | tr '\\n' ' ')"
[ -x /etc/testbed/boot.sh ] && /etc/testbed/boot.sh 2>&1 | sed 's/^/[boot] /'
for raw in /dev/virtio-ports/org.porthole.raw.*; do
  if [ -e "$raw" ]; then /usr/bin/node /opt/testbed/raw.js "$raw" & fi
done
if [ -e /dev/virtio-ports/${QGA_PORT_NAME} ]; then
  mkdir -p /run/qga; /usr/sbin/qemu-ga -m virtio-serial -p /dev/virtio-ports/${QGA_PORT_NAME} -t /run/qga -f /run/qga/pid 2>&1 | sed 's/^/[qga] /' &
fi
if [ -e /etc/testbed/agent-cmd ]; then
  log=$(cat /etc/testbed/agent-log 2>/dev/null)
  (while true; do
     $(cat /etc/testbed/agent-cmd) --channel virtio:${AGENT_PORT_NAME} --config /etc/porthole/agent.conf 2>&1
     echo "porthole-testbed: agent exited with status $?, restarting"
     sleep 1
   done) | sed 's/^/[agent] /' >> "\${log:-/dev/console}" &
fi
echo "porthole-testbed: services started"
while true; do sleep 3600; done
`;

/**
 * /sbin/shutdown: qemu-guest-agent runs `shutdown -h -r|-P|-H +0 MESSAGE` for guest-shutdown, which is how libvirt
 * carries out `virsh reboot` and `virsh shutdown` when the domain has a qemu-guest-agent channel. The test bed's init
 * is a shell script that ignores the signals busybox's reboot would send it, so the kernel is asked directly.
 */
export const SHUTDOWN_SCRIPT = `#!/bin/sh
action="poweroff -f"
for a in "$@"; do
  case "$a" in
    -r) action="reboot -f" ;;
    -H) action="halt -f" ;;
  esac
done
sync
exec $action
`;

/**
 * Raw virtio-serial throughput tool, run by node in the guest on each raw port.
 * The host sends 'U' + u64 length then that many bytes (guest answers 'K' when
 * all arrived), or 'D' + u64 length (guest sends that many bytes). 'H' and 'G'
 * are 'U' and 'D' with the per-byte work any verified transfer does: CRC32C of
 * each piece and sha256 of the whole, in the guest (native CRC32C from the
 * agent's directory). While no host is connected the port reads EOF: it is
 * closed and reopened after a pause.
 */
export const RAW_TOOL = `'use strict';
const fs = require('fs');
const net = require('net');
// Polled by the event loop as the agent polls its port (see the transport's virtio-serial.ts), so the
// limit is the port's, not a thread-pool round trip per 4 KiB read.
const { Pipe, constants } = process.binding('pipe_wrap');
const crypto = require('crypto');
const zeros = Buffer.alloc(1 << 20);
let socket;
let pending = Buffer.alloc(0);
let left = 0;
let hash; // of the checked upload under way
let crc32c;
// Loaded at the first checked transfer: the plain modes must work without the agent's files.
const check = (h, piece) => {
  (crc32c ??= require('/opt/porthole/node_modules/@node-rs/crc32').crc32c)(piece);
  h.update(piece);
};
function open() {
  const handle = new Pipe(constants.SOCKET);
  handle.open(fs.openSync(process.argv[2], fs.constants.O_RDWR | fs.constants.O_NONBLOCK));
  socket = new net.Socket({ handle, readable: true, writable: true, allowHalfOpen: true });
  socket.on('data', onData);
  socket.on('error', () => undefined);
  // EOF: no host connected. Reopen after a pause instead of spinning.
  socket.on('end', () => { socket.destroy(); pending = Buffer.alloc(0); left = 0; hash = undefined; setTimeout(open, 20); });
}
function received(piece) {
  left -= piece.length;
  if (hash && piece.length) check(hash, piece);
  if (left > 0) return;
  if (hash) hash.digest();
  hash = undefined;
  socket.write('K');
}
async function send(len, checked) {
  if (!checked) {
    for (let n = len; n > 0; n -= zeros.length) socket.write(zeros.subarray(0, Math.min(n, zeros.length)));
    return;
  }
  // Piece by piece as a verified sender works: checked, written, and the next one while the port moves it.
  const sending = socket;
  const h = crypto.createHash('sha256');
  for (let n = len; n > 0 && !sending.destroyed; n -= 128 << 10) {
    const out = zeros.subarray(0, Math.min(n, 128 << 10));
    check(h, out);
    if (!sending.write(out)) await new Promise((r) => { sending.once('drain', r); sending.once('close', r); });
  }
  h.digest();
}
function onData(chunk) {
  const take = Math.min(left, chunk.length);
  if (take) received(chunk.subarray(0, take));
  pending = Buffer.concat([pending, chunk.subarray(take)]);
  while (left === 0 && pending.length >= 9) {
    const kind = String.fromCharCode(pending[0]);
    const len = Number(pending.readBigUInt64BE(1));
    pending = pending.subarray(9);
    if (kind === 'U' || kind === 'H') {
      if (kind === 'H') hash = crypto.createHash('sha256');
      left = len;
      const now = pending.subarray(0, Math.min(len, pending.length));
      pending = pending.subarray(now.length);
      received(now);
    }
    if (kind === 'D' || kind === 'G') void send(len, kind === 'G');
  }
}
open();
`;
