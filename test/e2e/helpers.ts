// Helpers the end-to-end suites share: a command's output, a file read back, the agent's payload
// events and audit lines, and QMP media changes, all through the broker's client.
import { Vm } from '@porthole/testbed';
import { PortholeClient } from '@porthole/broker';
import { ejectPayloadMedium, insertPayloadMedium, QmpConnection } from '@porthole/media';
import { v1 } from '@porthole/protocol';

/** A command's exit and its whole stdout and stderr. */
export async function run(client: PortholeClient, command: string[] | { shell: string }) {
  const task = client.exec(command);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  task.stdout.on('data', (d: Buffer) => out.push(d));
  task.stderr.on('data', (d: Buffer) => err.push(d));
  const exit = await task.exit;
  return { ...exit, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
}

/**
 * Runs `echo first; sleep 2; echo second` and returns what the host had seen when the first
 * output arrived, and everything in order once the command ended ('out:<line>', 'exit').
 */
export async function liveOutput(client: PortholeClient): Promise<{ atFirstOutput: string[]; all: string[] }> {
  const task = client.exec({ shell: 'echo first; sleep 2; echo second' });
  const events: string[] = [];
  task.stdout.on('data', (d: Buffer) => events.push(`out:${d.toString().trim()}`));
  void task.exit.then(() => events.push('exit'));
  // Bounded: an exec that ends (or fails) without output, or a channel that went quiet, is an error, not a hang.
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    new Promise<void>((resolve) => task.stdout.once('data', () => resolve())),
    task.exit.then(() => { throw new Error('the command ended before any output arrived'); }),
    new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error('no output within 60 s')), 60_000); }),
  ]).finally(() => clearTimeout(timer));
  const atFirstOutput = [...events];
  await task.exit;
  return { atFirstOutput, all: events.filter((e) => e !== 'out:') };
}

/** A guest file's bytes, sha256 (the agent's) and metadata, read back over the channel. */
export async function readBack(client: PortholeClient, path: string | Buffer): Promise<{ data: Buffer; sha256: string; mode: number; uid: number; gid: number }> {
  const task = client.readFile(path);
  const parts: Buffer[] = [];
  task.data.on('data', (d: Buffer) => parts.push(d));
  const r = await task.result;
  return { data: Buffer.concat(parts), sha256: r.sha256, mode: r.header.mode, uid: r.header.uid, gid: r.header.gid };
}

/** Collects the agent's payload events; `next` waits for one matching. */
export function payloadEvents(client: PortholeClient) {
  const seen: v1.PayloadEvent.$Properties[] = [];
  const waiters: Array<() => void> = [];
  client.on('event', (e: v1.Event) => {
    if (!e.payload) return;
    seen.push(e.payload);
    waiters.splice(0).forEach((w) => w());
  });
  return {
    seen,
    async next(match: (e: v1.PayloadEvent.$Properties) => boolean, timeoutMs = 60000): Promise<v1.PayloadEvent.$Properties> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = seen.find(match);
        if (found) return found;
        if (Date.now() > deadline) throw new Error(`no matching payload event within ${timeoutMs} ms; seen: ${JSON.stringify(seen.map((s) => [s.payloadId, s.state]))}`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 500);
        });
      }
    },
  };
}

/** QMP media change, retried while the guest holds the tray locked (the agent's drive check opens it for a moment). */
export async function changeMedium(qmp: QmpConnection, image: string | undefined): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      if (image) await insertPayloadMedium(qmp, image, { medium: 'cd', device: 'cd0' });
      else await ejectPayloadMedium(qmp, { medium: 'cd', device: 'cd0' });
      return;
    } catch (err) {
      if (attempt >= 10 || !/locked/i.test((err as Error).message)) throw err;
      await new Promise((r) => setTimeout(r, 300));
    }
  }
}

/**
 * The console lines of the agent's audit log with this message. The test bed's
 * console prefixer (busybox sed) holds the newest line back until the next one
 * arrives, so a request is made first: its own log line pushes the others out.
 */
export async function auditLines(vm: Vm, client: PortholeClient, message: string): Promise<Array<Record<string, unknown>>> {
  await client.info();
  await new Promise((r) => setTimeout(r, 200));
  // The last piece may be a line the serial port is still delivering, and a kernel
  // message can land inside a line: only whole lines that parse are the agent's.
  const lines = vm.console().split('\n').slice(0, -1);
  const records: Array<Record<string, unknown>> = [];
  for (const l of lines) {
    if (!l.startsWith('[agent] {')) continue;
    try {
      records.push(JSON.parse(l.slice('[agent] '.length)) as Record<string, unknown>);
    } catch {
      continue;
    }
  }
  return records.filter((l) => l.message === message);
}

export async function waitFor<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, timeoutMs = 60000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}
