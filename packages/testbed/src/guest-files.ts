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
  tool=$(cat /etc/testbed/raw-tool.\${raw##*.} 2>/dev/null || echo /usr/bin/node /opt/testbed/raw.js)
  if [ -e "$raw" ]; then $tool "$raw" & fi
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
 * The agent's launcher as the packages install it (installers/porthole-agent-env.sh): the environment
 * that tunes the agent's process, e.g. the sha256 code that is fastest on this (emulated) CPU.
 */
export const AGENT_ENV_LAUNCHER = '/usr/lib/porthole/porthole-agent-env';
/** Node for the raw tools: the agent's launcher, so that they hash as fast as the agent can, but with V8's JIT. */
const NODE_TOOL = `env NODE_OPTIONS= ${AGENT_ENV_LAUNCHER} /usr/bin/node`;

/**
 * The programs that can serve a raw port (BootOptions.rawTools): the same protocol (RAW_TOOL's), read
 * and written three ways, so a benchmark can show what the port moves and what an event loop costs.
 */
export const RAW_TOOL_COMMANDS = {
  /** RAW_TOOL: Node, the port polled from the event loop as the agent polls its own. */
  'event-loop': `${NODE_TOOL} /opt/testbed/raw.js`,
  /** RAW_BLOCKING_TOOL: Node, blocking readSync/writeSync loops with 1 MiB buffers. */
  blocking: `${NODE_TOOL} /opt/testbed/raw-blocking.js`,
  /** RAW_C_SOURCE compiled static: read()/write() loops with 1 MiB buffers (plain 'U'/'D' only). */
  c: '/opt/testbed/raw-c',
} as const;

/** SPAWN_C_SOURCE compiled static (x86-64 guests, where the test bed had gcc). */
export const GUEST_SPAWN_TIMER = '/opt/testbed/spawn-c';
export type RawTool = keyof typeof RAW_TOOL_COMMANDS;

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

/** Where RAW_BLOCKING_TOOL's 'F' mode writes and its 'S' mode reads (tmpfs, as the bench's injections). */
const RAW_FLOOR_FILE = '/tmp/raw-floor.bin';

/**
 * RAW_TOOL's protocol served the plainest way Node has: blocking reads of up to 1 MiB straight into one
 * buffer, blocking 1 MiB writes, nothing between the port and the loop. 'H' and 'G' hash every byte with
 * sha256 in the same loop, 1 MiB at a time (no CRC32C: the floor for a protocol that checks the whole with sha256).
 * 'F' is 'H' that also writes every MiB to a new file on the guest's tmpfs (RAW_FLOOR_FILE), flushed and renamed
 * into place before the answer: the floor for a checked file injection, which must write the file too. 'S' is 'G'
 * sending that file's bytes, read a MiB at a time (from its start again if it is shorter): the floor for a checked
 * read-back.
 * A read of 0 bytes means no host is connected: close, pause, reopen.
 */
export const RAW_BLOCKING_TOOL = `'use strict';
const fs = require('fs');
const crypto = require('crypto');
const buf = Buffer.alloc(1 << 20);
const zeros = Buffer.alloc(1 << 20);
const head = Buffer.alloc(9);
const pause = new Int32Array(new SharedArrayBuffer(4));
function readFull(fd, b, n) {
  for (let got = 0; got < n;) {
    const r = fs.readSync(fd, b, got, n - got, null);
    if (r === 0) return false;
    got += r;
  }
  return true;
}
for (;;) {
  const fd = fs.openSync(process.argv[2], 'r+');
  while (readFull(fd, head, 9)) {
    const kind = String.fromCharCode(head[0]);
    let left = Number(head.readBigUInt64BE(1));
    const hash = 'HGFS'.includes(kind) ? crypto.createHash('sha256') : undefined;
    const file = kind === 'F' ? fs.openSync('${RAW_FLOOR_FILE}.part', 'w', 0o600) : undefined;
    if (kind === 'U' || kind === 'H' || kind === 'F') {
      // Reads return 4 KiB each under TCG: fill the buffer and hash it whole, not per read.
      let fill = 0;
      while (left > 0) {
        const r = fs.readSync(fd, buf, fill, Math.min(buf.length - fill, left), null);
        if (r === 0) break;
        fill += r;
        left -= r;
        if (fill === buf.length || left === 0) {
          if (hash) hash.update(buf.subarray(0, fill));
          if (file !== undefined) for (let off = 0; off < fill;) off += fs.writeSync(file, buf, off, fill - off);
          fill = 0;
        }
      }
      if (hash) hash.digest();
      if (file !== undefined) {
        fs.fsyncSync(file);
        fs.closeSync(file);
        fs.renameSync('${RAW_FLOOR_FILE}.part', '${RAW_FLOOR_FILE}');
      }
      fs.writeSync(fd, 'K');
    } else if (kind === 'D' || kind === 'G' || kind === 'S') {
      const file = kind === 'S' ? fs.openSync('${RAW_FLOOR_FILE}', 'r') : undefined;
      const from = file === undefined ? zeros : buf;
      let at = 0;
      while (left > 0) {
        const n = Math.min(from.length, left);
        for (let got = 0; file !== undefined && got < n;) {
          const r = fs.readSync(file, buf, got, n - got, at);
          if (!r && !at) throw new Error('${RAW_FLOOR_FILE} is empty');
          at = r ? at + r : 0; // a file shorter than asked for is read again from its start
          got += r;
        }
        if (hash) hash.update(from.subarray(0, n));
        for (let off = 0; off < n;) off += fs.writeSync(fd, from, off, n - off);
        left -= n;
      }
      if (hash) hash.digest();
      if (file !== undefined) fs.closeSync(file);
    }
  }
  fs.closeSync(fd);
  Atomics.wait(pause, 0, 0, 20);
}
`;

/**
 * What starting a command costs with nothing around it, for the exec floor: a C program starts /bin/true
 * N times (vfork, a session of its own, /dev/null as stdio, exec) and reaps each, and prints the ms of
 * each as a JSON list. Installed as /opt/testbed/spawn-c.
 */
export const SPAWN_C_SOURCE = `#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
  int runs = argc > 1 ? atoi(argv[1]) : 30;
  int null = open("/dev/null", O_RDWR);
  char *args[] = {"/bin/true", NULL};
  if (null < 0 || runs < 1) return 2;
  printf("[");
  for (int i = 0; i < runs; i++) {
    double t0 = now_ms();
    pid_t pid = vfork();
    if (pid == 0) {
      setsid();
      dup2(null, 0), dup2(null, 1), dup2(null, 2);
      execve(args[0], args, environ);
      _exit(127);
    }
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status)) return 1;
    printf("%s%.3f", i ? "," : "", now_ms() - t0);
  }
  printf("]\\n");
  return 0;
}
`;

/** RAW_BLOCKING_TOOL's plain 'U' and 'D' in C: the port's limit with no runtime at all in the guest. */
export const RAW_C_SOURCE = `#include <fcntl.h>
#include <stdint.h>
#include <unistd.h>

static char buf[1 << 20];
static const char zeros[1 << 20];

static int read_full(int fd, unsigned char *p, size_t n) {
  while (n) {
    ssize_t r = read(fd, p, n);
    if (r <= 0) return 0;
    p += r;
    n -= (size_t)r;
  }
  return 1;
}

static int write_full(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) return 0;
    p += w;
    n -= (size_t)w;
  }
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  for (;;) {
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) return 1;
    unsigned char head[9];
    while (read_full(fd, head, 9)) {
      uint64_t left = 0;
      for (int i = 1; i < 9; i++) left = left << 8 | head[i];
      if (head[0] == 'U') {
        while (left) {
          ssize_t r = read(fd, buf, left < sizeof buf ? left : sizeof buf);
          if (r <= 0) break;
          left -= (uint64_t)r;
        }
        if (!write_full(fd, "K", 1)) break;
      } else if (head[0] == 'D') {
        while (left) {
          size_t n = left < sizeof zeros ? left : sizeof zeros;
          if (!write_full(fd, zeros, n)) break;
          left -= n;
        }
      }
    }
    close(fd);
    usleep(20000); /* no host connected: pause, reopen */
  }
}
`;
