import { ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Session, v1, CHUNK_SIZE } from '@porthole/protocol';
import { UnixSocketConnector } from '@porthole/transport';
import { hostKernel } from './guest-root';

export const PORT_NAME = 'org.porthole.agent.0';

export interface Guest {
  /** Host end of the guest's Porthole virtio-serial port. */
  socket: string;
  /** The guest's serial console so far (for failure messages). */
  console(): string;
  stop(): Promise<void>;
}

/**
 * Boot a disk image with systemd as init under TCG (KVM hangs on these
 * machines), with the Porthole virtio-serial port on a host Unix socket.
 */
export function bootGuest(image: string, dir: string): Guest {
  const k = hostKernel();
  const socket = join(dir, 'porthole.sock');
  const consoleLog = join(dir, 'console.log');
  const qemu: ChildProcess = spawn('qemu-system-x86_64', [
    '-accel', 'tcg', '-m', '1024', '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none',
    '-kernel', k.vmlinuz, '-initrd', k.initrd,
    '-append', 'root=/dev/vda rw console=ttyS0 quiet systemd.show_status=false',
    '-drive', `file=${image},if=virtio,format=raw`,
    '-serial', `file:${consoleLog}`,
    '-device', 'virtio-serial-pci',
    '-chardev', `socket,id=porthole,path=${socket},server=on,wait=off`,
    '-device', `virtserialport,chardev=porthole,name=${PORT_NAME}`,
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  qemu.stderr?.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<void>((resolve) => qemu.once('exit', () => resolve()));
  return {
    socket,
    console: () => {
      let text = '';
      try { text = readFileSync(consoleLog, 'utf8'); } catch { /* not written yet */ }
      return `${text}${stderr ? `\n[qemu stderr] ${stderr}` : ''}`;
    },
    stop: async () => {
      if (qemu.exitCode === null && qemu.signalCode === null) qemu.kill('SIGKILL');
      await exited;
    },
  };
}

/** Connect to the QEMU chardev socket, retrying until QEMU has created it. */
export async function connectAgent(socket: string, timeoutMs: number): Promise<Session> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const channel = await new UnixSocketConnector(socket).connect();
      return new Session(channel, { role: 'broker', hello: { softwareVersion: 'porthole-packaging-test' }, keepaliveIntervalMs: 0 });
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** Wait for the next handshake (a restarted agent says hello again). */
export function nextHello(session: Session, timeoutMs: number): Promise<v1.Hello> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no new hello within ${timeoutMs} ms`)), timeoutMs);
    session.once('ready', (hello: v1.Hello) => {
      clearTimeout(timer);
      resolve(hello);
    });
  });
}

export async function writeFile(session: Session, path: string, data: Buffer, mode = 0o644): Promise<v1.FileWriteResult> {
  const sha256 = createHash('sha256').update(data).digest('hex');
  const stream = session.openStream({
    fileWrite: { path: Buffer.from(path), size: data.length, sizeKnown: true, mode, hasMode: true, mkdirParents: true },
  });
  for (let offset = 0; offset < data.length; offset += CHUNK_SIZE) {
    await stream.send({ chunk: { offset, data: data.subarray(offset, offset + CHUNK_SIZE) } });
  }
  await stream.send({ fileWriteEnd: { sha256 } });
  stream.end();
  let result: v1.FileWriteResult | undefined;
  for await (const msg of stream) if (msg.fileWriteResult) result = msg.fileWriteResult as v1.FileWriteResult;
  if (!result) throw new Error(`no fileWriteResult for ${path}`);
  return result;
}

export async function readFile(session: Session, path: string): Promise<Buffer> {
  const stream = session.openStream({ fileRead: { path: Buffer.from(path) } });
  stream.end();
  const parts: Buffer[] = [];
  for await (const msg of stream) if (msg.chunk?.data) parts.push(Buffer.from(msg.chunk.data));
  return Buffer.concat(parts);
}

export async function exec(session: Session, argv: string[], timeoutMs = 60_000): Promise<{ stdout: string; stderr: string; exit: v1.ExecExit }> {
  const stream = session.openStream({ exec: { argv: argv.map((a) => Buffer.from(a)), timeoutMs } });
  stream.end();
  let stdout = '';
  let stderr = '';
  let exit: v1.ExecExit | undefined;
  for await (const msg of stream) {
    if (msg.execOutput) {
      const text = Buffer.from(msg.execOutput.data ?? []).toString();
      if (msg.execOutput.fd === v1.OutputStream.OUTPUT_STDERR) stderr += text;
      else stdout += text;
    }
    if (msg.execExit) exit = msg.execExit as v1.ExecExit;
  }
  if (!exit) throw new Error(`no execExit for ${argv[0]}`);
  return { stdout, stderr, exit };
}
