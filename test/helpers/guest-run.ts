import type { PortholeClient } from '@porthole/broker';

/** Runs a command in the guest through the client; its exit status with the whole stdout and stderr as text. */
export async function run(client: PortholeClient, command: string[] | { shell: string }) {
  const task = client.exec(command);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  task.stdout.on('data', (d: Buffer) => out.push(d));
  task.stderr.on('data', (d: Buffer) => err.push(d));
  const exit = await task.exit;
  return { ...exit, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
}
