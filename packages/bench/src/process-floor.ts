// What starting a command costs inside the guest with nothing around it: a
// script run by node in the guest asks porthole-spawn (the C helper the agent
// starts commands through) to run /bin/true, and times start and exit there.
// An agent's exec round trip can be no faster than this plus one port round trip; a C program that starts
// the process itself (the test bed's spawn timer) gives the floor without the helper and Node around it.
import { PortholeClient } from '@porthole/broker';

/** Records as porthole-spawn.c reads and writes them: u32 length (of what follows), type, u32 id, payload. */
const GUEST_SCRIPT = `'use strict';
const { spawn } = require('child_process');
const helper = spawn(process.argv[2], [], { stdio: ['pipe', 'pipe', 'inherit'] });
let input = Buffer.alloc(0);
let waiting;
helper.stdout.on('data', (d) => {
  input = Buffer.concat([input, d]);
  while (input.length >= 4 && input.length >= 4 + input.readUInt32LE(0)) {
    const type = input.toString('latin1', 4, 5);
    input = input.subarray(4 + input.readUInt32LE(0));
    waiting?.(type, performance.now());
  }
});
const next = (type) => new Promise((resolve) => { waiting = (t, at) => { if (t === type) resolve(at); }; });
const send = (type, id, payload) => {
  const head = Buffer.alloc(9);
  head.writeUInt32LE(5 + payload.length, 0);
  head.write(type, 4, 'latin1');
  head.writeUInt32LE(id, 5);
  helper.stdin.write(Buffer.concat([head, payload]));
};
const env = Object.entries(process.env).map(([k, v]) => k + '=' + v);
(async () => {
  await next('R');
  const ms = [];
  for (let id = 1; id <= Number(process.argv[3]); id++) {
    const fields = ['', '', '', '/', '/bin/true', '1', '/bin/true', ...env];
    const t0 = performance.now();
    const exited = next('X');
    send('S', id, Buffer.from(fields.join('\\0') + '\\0'));
    ms.push((await exited) - t0);
  }
  helper.stdin.end();
  console.log(JSON.stringify(ms));
})();
`;

/** What a command in the guest printed (stdout, parsed as JSON); throws with its stderr when it failed. */
async function guestJson(client: PortholeClient, argv: string[], what: string): Promise<number[]> {
  const task = client.exec(argv);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  task.stdout.on('data', (d: Buffer) => out.push(d));
  task.stderr.on('data', (d: Buffer) => err.push(d));
  const exit = await task.exit;
  if (exit.code !== 0) throw new Error(`${what} in the guest exited ${exit.code}: ${Buffer.concat(err).toString().slice(0, 300)}`);
  return JSON.parse(Buffer.concat(out).toString()) as number[];
}

/** ms from asking porthole-spawn to run /bin/true to its exit status, `runs` times, measured in the guest by Node. */
export async function guestProcessTimes(client: PortholeClient, helperPath: string, runs: number): Promise<number[]> {
  const script = '/tmp/bench-process-floor.js';
  await client.installFile(Buffer.from(GUEST_SCRIPT), { path: script }).result;
  return guestJson(client, ['node', script, helperPath, String(runs)], 'the process timer');
}

/**
 * ms of /bin/true started (vfork, exec) and reaped by a C program in the guest, `runs` times: the process alone,
 * without the helper's records or Node's event loop around it (the test bed's spawn timer; absent without gcc).
 */
export async function guestSpawnTimes(client: PortholeClient, timerPath: string, runs: number): Promise<number[] | undefined> {
  try {
    return await guestJson(client, [timerPath, String(runs)], 'the C spawn timer');
  } catch (err) {
    if (/not found/.test((err as Error).message)) return undefined;
    throw err;
  }
}
