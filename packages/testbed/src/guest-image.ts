import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { INIT_SCRIPT, RAW_TOOL, RAW_BLOCKING_TOOL, RAW_C_SOURCE, SPAWN_C_SOURCE, RAW_TOOL_COMMANDS, RawTool, GUEST_SPAWN_HELPER, GUEST_SPAWN_TIMER, AGENT_ENV_LAUNCHER, SHUTDOWN_SCRIPT } from './guest-files';
import { GuestArch, guestPlatform, modulePath } from './guest-arch';

/** Where prepared guests are cached (git-ignored). */
export const CACHE_DIR = process.env.PORTHOLE_TESTBED_CACHE ?? join(__dirname, '..', '..', '..', '.cache', 'testbed');

const BUSYBOX_APPLETS = ['sh', 'mount', 'umount', 'insmod', 'mkdir', 'ln', 'cat', 'ls', 'echo', 'sleep', 'poweroff', 'reboot',
  'hostname', 'sed', 'tr', 'basename', 'dirname', 'true', 'false', 'rm', 'cp', 'mv', 'chmod', 'chown', 'stat', 'id', 'env',
  'printf', 'test', '[', 'head', 'tail', 'wc', 'sha256sum', 'dd', 'kill', 'ps', 'grep', 'date', 'touch', 'find', 'xargs',
  'mknod', 'blkid', 'losetup', 'sync', 'df', 'du', 'yes', 'seq', 'timeout', 'awk', 'cut', 'sort', 'uname', 'whoami', 'nproc', 'pidof', 'pgrep', 'pkill', 'free', 'cmp'];

function copyInto(root: string, path: string, as = path): void {
  const target = join(root, as);
  mkdirSync(dirname(target), { recursive: true });
  copyFileSync(path, target);
  chmodSync(target, statSync(path).mode & 0o7777);
}

/** Pack a directory as a newc cpio archive (the format the kernel unpacks), owned by root. */
export function packCpio(dir: string, out: string): void {
  const list = execFileSync('find', ['.', '-mindepth', '1'], { cwd: dir, encoding: 'buffer', maxBuffer: 64 << 20 });
  execFileSync('cpio', ['-o', '-H', 'newc', '-R', '0:0', '--quiet', '-O', out], { cwd: dir, input: list });
}

function fingerprint(paths: string[], modules: string[]): string {
  const h = createHash('sha256');
  h.update(INIT_SCRIPT).update(RAW_TOOL).update(RAW_BLOCKING_TOOL).update(RAW_C_SOURCE).update(SPAWN_C_SOURCE).update(SHUTDOWN_SCRIPT).update(modules.join(','));
  for (const p of paths) {
    const st = statSync(p);
    h.update(`${p}:${st.size}:${st.mtimeMs}`);
  }
  return h.digest('hex').slice(0, 16);
}

/** The C raw-port tool, static (the x86-64 guest runs the host's programs); left out, with a message, where gcc is missing. */
function compileC(source: string, out: string, what: string, log: (m: string) => void): void {
  try {
    execFileSync('gcc', ['-O2', '-Wall', '-Wextra', '-Werror', '-static', '-s', '-o', out, '-x', 'c', '-'], { input: source, stdio: ['pipe', 'ignore', 'pipe'] });
  } catch (err) {
    log(`the ${what} did not compile (${(err as Error).message.split('\n')[0]}): install gcc and libc6-dev; it is left out`);
  }
}

/**
 * The cached part of every guest of a CPU: kernel modules, busybox, the
 * platform's programs with their libraries (x86-64: node, qemu-guest-agent;
 * aarch64: the libraries of the agent's executable), the raw-port tool. Rebuilt
 * only when one of those inputs changes.
 */
export function prepareBaseImage(log: (m: string) => void = () => undefined, arch: GuestArch = 'x64'): { initramfs: string; kernel: string } {
  const platform = guestPlatform(arch, CACHE_DIR);
  const kernel = platform.kernel();
  const busybox = platform.busybox();
  const programs = platform.programs();
  const modules = platform.modules.map((m) => ({ name: m, path: modulePath(kernel, m) }));
  const key = fingerprint([kernel.vmlinuz, busybox, ...programs.map((p) => p.from), ...modules.map((m) => m.path)], platform.modules);
  const out = join(CACHE_DIR, `base-${arch}-${key}.cpio`);
  if (existsSync(out)) return { initramfs: out, kernel: kernel.vmlinuz };

  log(`preparing the guest image (once; cached in ${CACHE_DIR})`);
  mkdirSync(CACHE_DIR, { recursive: true });
  const root = mkdtempSync(join(tmpdir(), 'porthole-guest-'));
  try {
    for (const d of ['bin', 'sbin', 'etc/testbed', 'etc/porthole', 'proc', 'sys', 'dev', 'tmp', 'run', 'root', 'lib/modules', 'opt/testbed', 'usr/bin', 'usr/sbin', 'var/lib']) {
      mkdirSync(join(root, d), { recursive: true });
    }
    copyInto(root, busybox, '/bin/busybox');
    for (const applet of BUSYBOX_APPLETS) symlinkSync('busybox', join(root, 'bin', applet));
    for (const m of modules) {
      if (m.path.endsWith('.ko')) copyFileSync(m.path, join(root, 'lib/modules', `${m.name}.ko`));
    }
    writeFileSync(join(root, 'etc/testbed/modules'), modules.filter((m) => m.path.endsWith('.ko')).map((m) => m.name).join('\n') + '\n');
    for (const p of programs) copyInto(root, p.from, p.to);
    writeFileSync(join(root, 'opt/testbed/raw.js'), RAW_TOOL);
    writeFileSync(join(root, 'opt/testbed/raw-blocking.js'), RAW_BLOCKING_TOOL);
    if (arch === 'x64') {
      compileC(RAW_C_SOURCE, join(root, RAW_TOOL_COMMANDS.c.slice(1)), 'C raw-port tool (raw ports asking for it stay unserved)', log);
      compileC(SPAWN_C_SOURCE, join(root, GUEST_SPAWN_TIMER.slice(1)), 'C spawn timer (the exec floor is then timed through porthole-spawn only)', log);
    }
    writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\ntester:x:1000:1000:tester:/home/tester:/bin/sh\n');
    writeFileSync(join(root, 'etc/group'), 'root:x:0:\ndaemon:x:1:\nusers:x:100:tester\nnogroup:x:65534:\ntester:x:1000:\n');
    mkdirSync(join(root, 'home/tester'), { recursive: true });
    writeFileSync(join(root, 'sbin/shutdown'), SHUTDOWN_SCRIPT, { mode: 0o755 });
    const init = join(root, 'init');
    writeFileSync(init, INIT_SCRIPT, { mode: 0o755 });
    const tmpOut = `${out}.${process.pid}.tmp`;
    packCpio(root, tmpOut);
    renameSync(tmpOut, out);
    return { initramfs: out, kernel: kernel.vmlinuz };
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

/** The agent starts as its systemd unit starts it, through the packages' launcher (AGENT_ENV_LAUNCHER). */
const AGENT_ENV_SOURCE = join(__dirname, '..', '..', '..', 'installers', 'porthole-agent-env.sh');

export type AgentSource = { bundle: string } | { executable: string };

export interface GuestOptions {
  /** The guest's CPU (default x64: the host's kernel and programs). An arm64 guest runs the agent's single executable only. */
  arch?: GuestArch;
  /** The agent to run: a JS bundle (run with node) or a single executable. */
  agent?: AgentSource;
  /** Text of /etc/porthole/agent.conf (the owner's policy). */
  agentConfig?: string;
  /**
   * A file in the guest for the agent's output (its audit log) instead of the console: the
   * emulated serial console costs milliseconds of guest CPU per line, more than journald would.
   */
  agentLog?: string;
  /** Shell run at boot before the agent starts (output on the console, prefixed [boot]). */
  bootScript?: string;
  files?: Array<{ path: string; content: string | Buffer; mode?: number }>;
  /** The program serving each raw port (BootOptions.rawPorts), by port number; unlisted ports get 'event-loop'. */
  rawTools?: RawTool[];
}

/** The per-boot part, as a second cpio archive the kernel unpacks over the base. */
export function buildOverlay(options: GuestOptions, out: string): void {
  const platform = guestPlatform(options.arch ?? 'x64', CACHE_DIR);
  if (options.agent && 'bundle' in options.agent && !platform.hasNode) {
    throw new Error(`the ${platform.arch} guest has no node for the agent's JS bundle: give it the single executable built for ${platform.arch}`);
  }
  const root = mkdtempSync(join(tmpdir(), 'porthole-overlay-'));
  try {
    const put = (path: string, content: string | Buffer, mode = 0o644) => {
      mkdirSync(dirname(join(root, path)), { recursive: true });
      writeFileSync(join(root, path), content, { mode });
    };
    // The raw tools start through it too, so that the floors hash as fast as the agent can.
    put(AGENT_ENV_LAUNCHER, readFileSync(AGENT_ENV_SOURCE), 0o755);
    if (options.agent) {
      if ('bundle' in options.agent) {
        copyInto(root, options.agent.bundle, '/opt/porthole/porthole-agent.cjs');
        put('/etc/testbed/agent-cmd', `${AGENT_ENV_LAUNCHER} /usr/bin/node /opt/porthole/porthole-agent.cjs\n`);
      } else {
        copyInto(root, options.agent.executable, '/opt/porthole/porthole-agent');
        put('/etc/testbed/agent-cmd', `${AGENT_ENV_LAUNCHER} /opt/porthole/porthole-agent\n`);
      }
      // As the packages do: porthole-spawn beside the agent when the build made it there.
      const source = 'bundle' in options.agent ? options.agent.bundle : options.agent.executable;
      const helper = join(dirname(source), 'porthole-spawn');
      if (existsSync(helper)) copyInto(root, helper, GUEST_SPAWN_HELPER);
      // And the CRC32C addon beside the agent (pure JS is the agent's bottleneck under TCG).
      for (const { name, dir } of platform.crc32cAddon()) {
        cpSync(dir, join(root, 'opt/porthole/node_modules', name), { recursive: true });
        // It may link a library node (whose libraries the base image has) does not: librt on x86-64.
        for (const addon of readdirSync(dir).filter((f) => f.endsWith('.node'))) for (const lib of platform.libraries(join(dir, addon))) copyInto(root, lib.from, lib.to);
      }
    }
    put('/etc/porthole/agent.conf', options.agentConfig ?? '# test bed default: everything on\n');
    if (options.agentLog) put('/etc/testbed/agent-log', `${options.agentLog}\n`);
    if (options.bootScript) put('/etc/testbed/boot.sh', `#!/bin/sh\n${options.bootScript}\n`, 0o755);
    for (const f of options.files ?? []) put(f.path, f.content, f.mode ?? 0o644);
    (options.rawTools ?? []).forEach((tool, n) => put(`/etc/testbed/raw-tool.${n}`, `${RAW_TOOL_COMMANDS[tool]}\n`));
    packCpio(root, out);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

/** Base + overlay in one file (QEMU and boot loaders take one initramfs). */
export function concatInitramfs(base: string, overlay: string, out: string): void {
  execFileSync('sh', ['-c', 'cat "$1" "$2" > "$3"', 'sh', base, overlay, out]);
}

/** This guest's whole initramfs (cached base + its overlay) at `out`; returns the kernel to boot it with. */
export function buildGuestInitramfs(options: GuestOptions, out: string, log: (m: string) => void = () => undefined): { kernel: string } {
  const base = prepareBaseImage(log, options.arch);
  const overlay = `${out}.overlay`;
  try {
    buildOverlay(options, overlay);
    concatInitramfs(base.initramfs, overlay, out);
  } finally {
    rmSync(overlay, { force: true });
  }
  return { kernel: base.kernel };
}
