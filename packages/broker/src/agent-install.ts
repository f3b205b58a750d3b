// `porthole agent install`: turn a running VM that has only qemu-guest-agent into a Porthole VM
// without a reboot — hot-plug the Porthole port (QMP on plain QEMU, `virsh attach-device --live` on
// libvirt), push the agent through qemu-ga, start it, and wait until it answers on the new port.
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { v1, PortholeError } from '@porthole/protocol';
import { locateChannel, parseDomainXml, findChannel, parseLibvirtTarget, Virsh } from '@porthole/libvirt';
import { connectQmpSocket, QmpExecutor } from '@porthole/media';
import { PortholeClient } from './client';
import { QGA_PORT_NAME, QgaGuest, qgaFailure } from './qga-guest';
import { LibvirtQga } from './qga-libvirt';
import { PORTHOLE_PORT_NAME } from './targets';

const E = v1.ErrorCode;

/** qemu-ga commands the installation needs. */
export const INSTALL_NEEDS = ['guest-exec', 'guest-exec-status', 'guest-file-open', 'guest-file-write', 'guest-file-close'];

/** Where the agent goes in the guest (as the .deb and the tarball put it). */
const GUEST_AGENT = '/usr/lib/porthole/porthole-agent';
const GUEST_SPAWN = '/usr/lib/porthole/porthole-spawn';
/** The launcher that sets the environment tuning the agent's process (installers/porthole-agent-env.sh). */
const GUEST_ENV = '/usr/lib/porthole/porthole-agent-env';

/** QEMU ids of the hot-plugged chardev and port. */
const CHARDEV_ID = 'porthole-agent';
const DEVICE_ID = 'porthole-agent-port';

export interface AgentInstallOptions {
  /** `qga:/path/to/qga.sock` (plain QEMU, with `qmp`) or `libvirt:[URI/]DOMAIN`. */
  target: string;
  /** Plain QEMU: the VM's QMP socket. */
  qmp?: string;
  /** Plain QEMU: where the new port's socket goes (default: porthole-agent.sock beside the qga socket). */
  socket?: string;
  /** A .deb, used when the guest has dpkg. */
  deb?: string;
  /** The agent's single executable, used otherwise (porthole-spawn beside it goes along when there). */
  executable?: string;
  /** How long to wait for the agent to answer after starting it. */
  timeoutMs?: number;
  progress?: (step: string) => void;
}

export interface AgentInstallResult {
  action: 'installed' | 'upgraded' | 'current';
  method: 'deb' | 'executable';
  /** The port was hot-plugged by this run (false: it was there). */
  hotplugged: boolean;
  /** Where Porthole's agent now answers. */
  portholeTarget: string;
  qemuGuestAgent: string;
  agent: string;
  previousAgent?: string;
}

/** The libvirt <channel> for the Porthole port, its socket at `path`. */
export function portholeChannelXml(path: string): string {
  const esc = path.replace(/&/g, '&amp;').replace(/'/g, '&apos;').replace(/</g, '&lt;');
  return `<channel type='unix'><source mode='bind' path='${esc}'/><target type='virtio' name='${PORTHOLE_PORT_NAME}'/></channel>\n`;
}

/** virsh arguments that add the channel to the running domain (and to its definition when it has one). */
export function attachChannelArgs(domain: string, xmlFile: string, persistent: boolean): string[] {
  return ['attach-device', '--domain', domain, '--file', xmlFile, '--live', ...(persistent ? ['--config'] : [])];
}

interface SerialPort {
  path: string;
  name: string;
  chardev: string;
}

/** The VM's virtserialports (QOM, named and anonymous devices) with their port names and chardevs. */
async function virtioSerialPorts(qmp: QmpExecutor): Promise<SerialPort[]> {
  const ports: SerialPort[] = [];
  for (const parent of ['/machine/peripheral', '/machine/peripheral-anon']) {
    const children = (await qmp.execute('qom-list', { path: parent })) as Array<{ name: string; type: string }>;
    for (const c of children.filter((x) => x.type === 'child<virtserialport>')) {
      const path = `${parent}/${c.name}`;
      ports.push({ path, name: await qmp.execute('qom-get', { path, property: 'name' }), chardev: await qmp.execute('qom-get', { path, property: 'chardev' }) });
    }
  }
  return ports;
}

/** The Unix socket path of a chardev, from query-chardev ("unix:/path,server=on", "disconnected:" first while no client is on it). */
export function chardevSocketPath(filename: string | undefined): string | undefined {
  const f = filename?.replace(/^disconnected:/, '');
  return f?.startsWith('unix:') ? f.slice(5).split(',')[0] : undefined;
}

async function chardevSocket(qmp: QmpExecutor, label: string): Promise<string | undefined> {
  const list = (await qmp.execute('query-chardev')) as Array<{ label: string; filename: string }>;
  return chardevSocketPath(list.find((c) => c.label === label)?.filename);
}

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** The shell that finds the hot-plugged port, names it as udev would, and (re)starts the agent. */
const START_SCRIPT = `set -e
name=${PORTHOLE_PORT_NAME}
dev=; i=0
while [ -z "$dev" ]; do
  for p in /sys/class/virtio-ports/*; do [ "$(cat $p/name 2>/dev/null)" = "$name" ] && dev=$(basename $p); done
  [ -n "$dev" ] && break
  i=$((i+1)); [ $i -lt 100 ] || { echo "the guest did not see port $name" >&2; exit 1; }; sleep 0.1
done
# udev names the port; images without udev (or without its virtio-ports rule) get the link here.
mkdir -p /dev/virtio-ports; [ -e /dev/virtio-ports/$name ] || ln -s ../$dev /dev/virtio-ports/$name
mkdir -p /etc/porthole; [ -e /etc/porthole/agent.conf ] || echo '# porthole agent install: the agent defaults' > /etc/porthole/agent.conf
if [ -d /run/systemd/system ] && [ -f /usr/lib/systemd/system/porthole-agent.service ]; then
  systemctl daemon-reload; systemctl enable porthole-agent >/dev/null 2>&1 || true; systemctl restart porthole-agent
else
  if [ -f /run/porthole-agent.pid ]; then kill $(cat /run/porthole-agent.pid) 2>/dev/null || true; sleep 0.5; fi
  mkdir -p /var/log
  # Started as its systemd unit starts it: through its launcher, when the executable came with one.
  launcher=${GUEST_ENV}; [ -x $launcher ] || launcher=
  setsid $launcher ${GUEST_AGENT} --channel virtio:$name </dev/null >>/var/log/porthole-agent.log 2>&1 &
  echo $! > /run/porthole-agent.pid
fi
`;

export async function installAgent(options: AgentInstallOptions): Promise<AgentInstallResult> {
  const say = options.progress ?? (() => undefined);
  const timeoutMs = options.timeoutMs ?? 120_000;
  const libvirt = options.target.startsWith('libvirt:') ? parseLibvirtTarget(options.target.slice('libvirt:'.length)) : undefined;
  if (!libvirt && !options.target.startsWith('qga:')) {
    throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, `agent install takes qga:/path/to/qga.sock (with --qmp) or libvirt:DOMAIN, not ${options.target}`);
  }
  if (!libvirt && !options.qmp) throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, 'a plain QEMU VM needs its QMP socket (--qmp PATH) to hot-plug the port');
  if (!options.deb && !options.executable) throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, 'give the agent to install: --deb FILE and/or --executable FILE');

  const virsh = libvirt ? new Virsh({ uri: libvirt.uri }) : undefined;
  const qgaPath = libvirt ? (await locateChannel(virsh!, libvirt.domain, QGA_PORT_NAME)).channel.path : options.target.slice(4);
  say(`connecting to qemu-guest-agent (${qgaPath})`);
  const qga = libvirt
    ? await QgaGuest.over(options.target, new LibvirtQga(virsh!, libvirt.domain), { via: 'direct', detail: `libvirt:${libvirt.domain} through virsh qemu-agent-command` })
    : await QgaGuest.connect(options.target, qgaPath, 30_000);
  try {
    const blocked = INSTALL_NEEDS.filter((c) => !qga.enabled(c));
    if (blocked.length) {
      throw new PortholeError(E.ERROR_CODE_POLICY_DENIED, `this guest's qemu-guest-agent has ${blocked.join(', ')} disabled; installing the agent needs them`,
        { rule: `qemu-ga --block-rpcs ${blocked.join(',')}` });
    }

    // 1. The port.
    let hotplugged = false;
    let portholeTarget: string;
    if (libvirt) {
      const d = parseDomainXml(await virsh!.dumpXml(libvirt.domain));
      if (!findChannel(d, PORTHOLE_PORT_NAME)) {
        const path = join(dirname(qgaPath), PORTHOLE_PORT_NAME);
        say(`adding port ${PORTHOLE_PORT_NAME} to libvirt domain ${d.name} (virsh attach-device --live, socket ${path})`);
        const persistent = /^Persistent:\s+yes/m.test(await virsh!.run(['dominfo', '--', libvirt.domain], { domain: libvirt.domain }));
        const dir = mkdtempSync(join(tmpdir(), 'porthole-channel-'));
        try {
          writeFileSync(join(dir, 'channel.xml'), portholeChannelXml(path));
          await virsh!.run(attachChannelArgs(libvirt.domain, join(dir, 'channel.xml'), persistent), { domain: libvirt.domain });
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
        hotplugged = true;
      }
      portholeTarget = options.target;
    } else {
      const qmp = await connectQmpSocket(options.qmp!);
      try {
        const existing = (await virtioSerialPorts(qmp)).find((p) => p.name === PORTHOLE_PORT_NAME);
        let path = existing ? await chardevSocket(qmp, existing.chardev) : undefined;
        if (existing && !path) throw new PortholeError(E.ERROR_CODE_UNSUPPORTED, `port ${PORTHOLE_PORT_NAME} exists on chardev ${existing.chardev}, which is not a Unix socket`);
        if (!existing) {
          path = options.socket ?? join(dirname(qgaPath), 'porthole-agent.sock');
          say(`adding port ${PORTHOLE_PORT_NAME} over QMP (chardev-add, device_add virtserialport; socket ${path})`);
          await qmp.execute('chardev-add', { id: CHARDEV_ID, backend: { type: 'socket', data: { addr: { type: 'unix', data: { path } }, server: true, wait: false } } });
          try {
            await qmp.execute('device_add', { driver: 'virtserialport', id: DEVICE_ID, chardev: CHARDEV_ID, name: PORTHOLE_PORT_NAME });
          } catch (err) {
            await qmp.execute('chardev-remove', { id: CHARDEV_ID }).catch(() => undefined);
            throw new PortholeError(E.ERROR_CODE_UNSUPPORTED, `cannot add the port (does the VM have a virtio-serial controller with a free port?): ${(err as Error).message}`);
          }
          hotplugged = true;
        }
        portholeTarget = `unix:${path}`;
      } finally {
        qmp.close();
      }
    }

    // 2. What runs there now, and what we would install.
    const hasDpkg = (await qga.run(['/bin/sh', '-c', 'command -v dpkg'])).code === 0;
    const method: 'deb' | 'executable' = options.deb && (hasDpkg || !options.executable) ? 'deb' : 'executable';
    if (method === 'deb' && !hasDpkg) throw new PortholeError(E.ERROR_CODE_UNSUPPORTED, 'the guest has no dpkg for the .deb: give --executable');
    // A port this run added has no agent yet: asking would only leave our hello queued in its socket.
    const previousAgent = hotplugged ? undefined : await PortholeClient.connect(portholeTarget, { broker: false, timeoutMs: 3000, reconnect: false })
      .then((c) => { const v = c.hello?.softwareVersion; c.close(); return v; }, () => undefined);
    const installed = method === 'deb'
      ? (await qga.run(['/bin/sh', '-c', 'dpkg-query -W -f \'${Version}\' porthole-agent 2>/dev/null'])).stdout.toString()
      : (await qga.run(['/bin/sh', '-c', `[ -f ${GUEST_AGENT} ] && sha256sum ${GUEST_AGENT}`])).stdout.toString().split(' ')[0];
    const wanted = method === 'deb' ? execFileSync('dpkg-deb', ['-f', options.deb!, 'Version'], { encoding: 'utf8' }).trim() : sha256(options.executable!);
    if (previousAgent && installed === wanted) {
      say(`porthole-agent is current (${previousAgent})`);
      return { action: 'current', method, hotplugged, portholeTarget, qemuGuestAgent: qga.agent, agent: previousAgent, previousAgent };
    }

    // 3. Push and install.
    // Compressed when the guest can unpack it: every byte crosses qemu-ga as base64 JSON (and through libvirt, a virsh run per 64 KiB).
    const hasGzip = (await qga.run(['/bin/sh', '-c', 'command -v gzip'])).code === 0;
    const push = async (local: string, remote: string, mode: number) => {
      const packed = hasGzip ? gzipSync(readFileSync(local), { level: 1 }) : undefined;
      say(`copying ${local} to ${remote} through qemu-guest-agent${packed ? ` (gzip, ${packed.length >> 20} MiB)` : ''}`);
      let shown = 0;
      const task = qga.installFile(packed ?? { path: local }, { path: packed ? `${remote}.gz` : remote, mode, mkdir: true });
      task.on('progress', (p: { bytes: number; total: number }) => {
        if (p.bytes - shown >= 16 << 20 || p.bytes === p.total) { shown = p.bytes; say(`  ${p.bytes >> 20}/${p.total >> 20} MiB`); }
      });
      await task.result;
      if (!packed) return;
      const r = await qga.run(['/bin/sh', '-c', 'set -e; gzip -dc "$1.gz" > "$1"; rm -f "$1.gz"; chmod "$2" "$1"; sha256sum "$1"', 'sh', remote, mode.toString(8)]);
      const sum = r.stdout.toString().split(' ')[0];
      if (r.code !== 0 || sum !== sha256(local)) throw new PortholeError(E.ERROR_CODE_CHECKSUM_MISMATCH, `unpacking ${remote} in the guest failed: ${r.stderr.toString().trim() || `sha256 ${sum}`}`);
    };
    if (method === 'deb') {
      await push(options.deb!, '/tmp/porthole-agent.deb', 0o644);
      say('dpkg -i porthole-agent.deb');
      const r = await qga.run(['/bin/sh', '-c', 'dpkg -i /tmp/porthole-agent.deb; s=$?; rm -f /tmp/porthole-agent.deb; exit $s'], { timeoutMs });
      if (r.code !== 0) throw new PortholeError(E.ERROR_CODE_INTERNAL, `dpkg -i failed: ${r.stderr.toString().trim() || r.stdout.toString().trim()}`);
    } else {
      // Beside the running agent, then renamed over it: a running executable cannot be written.
      await push(options.executable!, `${GUEST_AGENT}.new`, 0o755);
      // porthole-spawn and the launcher go along when they are beside it (the build's dist/, the tarball's usr/lib/porthole/).
      const beside = [[GUEST_SPAWN, 'porthole-spawn'], [GUEST_ENV, 'porthole-agent-env']].filter(([, name]) => existsSync(join(dirname(options.executable!), name)));
      for (const [remote, name] of beside) await push(join(dirname(options.executable!), name), `${remote}.new`, 0o755);
      const r = await qga.run(['/bin/sh', '-c', [GUEST_AGENT, ...beside.map(([remote]) => remote)].map((p) => `mv -f ${p}.new ${p}`).join('; ')]);
      if (r.code !== 0) throw new PortholeError(E.ERROR_CODE_INTERNAL, `installing ${GUEST_AGENT} failed: ${r.stderr.toString().trim()}`);
    }

    // 4. Start it and wait for its hello on the new port.
    say('starting porthole-agent');
    const started = await qga.run(['/bin/sh', '-c', START_SCRIPT], { timeoutMs: 60_000 });
    if (started.code !== 0) throw new PortholeError(E.ERROR_CODE_INTERNAL, `starting porthole-agent failed: ${started.stderr.toString().trim()}`);
    say(`waiting for porthole-agent on ${portholeTarget}`);
    const client = await PortholeClient.connect(portholeTarget, { broker: false, timeoutMs, reconnect: false });
    const agent = client.hello?.softwareVersion ?? '';
    client.close();
    return { action: previousAgent ? 'upgraded' : 'installed', method, hotplugged, portholeTarget, qemuGuestAgent: qga.agent, agent, previousAgent };
  } catch (err) {
    throw qgaFailure(err);
  } finally {
    qga.close();
  }
}
