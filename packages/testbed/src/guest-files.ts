// Files the test bed puts in every guest: the init script and the raw-port tool.

export const AGENT_PORT_NAME = 'org.porthole.agent.0';
export const QGA_PORT_NAME = 'org.qemu.guest_agent.0';
export const rawPortName = (n: number) => `org.porthole.raw.${n}`;

/** Load order matters: dependencies first (from `modinfo -F depends`). */
export const GUEST_MODULES = [
  'virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci', 'virtio_console',
  'scsi_common', 'scsi_mod', 'cdrom', 'sr_mod', 'libata', 'ata_piix', 'ata_generic', 'libahci', 'ahci',
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
  (while true; do
     $(cat /etc/testbed/agent-cmd) --channel virtio:${AGENT_PORT_NAME} --config /etc/porthole/agent.conf 2>&1
     echo "porthole-testbed: agent exited with status $?, restarting"
     sleep 1
   done) | sed 's/^/[agent] /' &
fi
echo "porthole-testbed: services started"
while true; do sleep 3600; done
`;

/**
 * Raw virtio-serial throughput tool, run by node in the guest on each raw port.
 * The host sends 'U' + u64 length then that many bytes (guest answers 'K' when
 * all arrived), or 'D' + u64 length (guest sends that many bytes). Reads that
 * return EOF (no host connected) back off instead of spinning, and the port is
 * never closed (closing it would drop the host's connection).
 */
export const RAW_TOOL = `'use strict';
const fs = require('fs');
const fd = fs.openSync(process.argv[2], 'r+');
const buf = Buffer.allocUnsafe(1 << 20);
const zeros = Buffer.alloc(1 << 20);
let pending = Buffer.alloc(0);
function read(cb) { fs.read(fd, buf, 0, buf.length, null, (err, n) => { if (err || n === 0) return setTimeout(() => read(cb), 20); cb(buf.subarray(0, n)); }); }
function writeAll(total, done) { if (total <= 0) return done(); const n = Math.min(total, zeros.length); fs.write(fd, zeros, 0, n, null, (err, w) => { if (err) return setTimeout(() => writeAll(total, done), 20); writeAll(total - w, done); }); }
function header() {
  if (pending.length >= 9) {
    const kind = String.fromCharCode(pending[0]); const len = Number(pending.readBigUInt64BE(1)); const rest = pending.subarray(9); pending = Buffer.alloc(0);
    if (kind === 'U') return sink(len - rest.length);
    if (kind === 'D') return writeAll(len, header);
    return header();
  }
  read((chunk) => { pending = Buffer.concat([pending, chunk]); header(); });
}
function sink(left) {
  if (left <= 0) return fs.write(fd, Buffer.from('K'), () => header());
  read((chunk) => { if (chunk.length > left) pending = Buffer.from(chunk.subarray(left)); sink(left - chunk.length); });
}
header();
`;
