// A minimal qemu-guest-agent client (JSON commands over its virtio-serial
// port), used to measure Porthole against the established tool in the same VM.
import * as net from 'node:net';

export class QgaClient {
  private buffer = '';
  private pending: Array<{ resolve: (v: unknown) => void; reject: (e: Error) => void }> = [];

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (text: string) => this.onData(text));
    socket.on('close', () => {
      for (const p of this.pending.splice(0)) p.reject(new Error('qemu-guest-agent channel closed'));
    });
  }

  /** Connect and resynchronise (guest-sync-delimited flushes stale output). */
  static async connect(path: string, timeoutMs = 60000): Promise<QgaClient> {
    const socket = net.connect(path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const client = new QgaClient(socket);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const id = Math.floor(Math.random() * 1e9);
      try {
        const got = await client.command('guest-sync-delimited', { id }, 2000);
        if (got === id) return client;
      } catch {
        // qemu-ga not up yet
      }
      if (Date.now() > deadline) throw new Error(`qemu-guest-agent did not answer on ${path} within ${timeoutMs} ms`);
    }
  }

  private onData(text: string): void {
    // 0xFF precedes the guest-sync-delimited answer; anything before it is stale.
    const ff = text.lastIndexOf('\xff');
    // Replies to guest-file-read are megabytes long: look for the newline in the new text only.
    if (ff >= 0) {
      this.buffer = '';
      text = text.slice(ff + 1);
    }
    this.buffer += text;
    if (!text.includes('\n')) return;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (!line) continue;
      const waiter = this.pending.shift();
      if (!waiter) continue;
      try {
        const reply = JSON.parse(line) as { return?: unknown; error?: { class: string; desc: string } };
        if (reply.error) waiter.reject(new Error(`qemu-guest-agent: ${reply.error.class}: ${reply.error.desc}`));
        else waiter.resolve(reply.return);
      } catch (err) {
        waiter.reject(err as Error);
      }
    }
  }

  command<T = unknown>(execute: string, args?: Record<string, unknown>, timeoutMs = 60000): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending = this.pending.filter((p) => p !== entry);
        reject(new Error(`qemu-guest-agent: ${execute} timed out`));
      }, timeoutMs);
      const entry = {
        resolve: (v: unknown) => { clearTimeout(timer); resolve(v as T); },
        reject: (e: Error) => { clearTimeout(timer); reject(e); },
      };
      this.pending.push(entry);
      this.socket.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + '\n');
    });
  }

  /** Write a file the way management tools do: open, write base64 chunks, close. */
  async writeFile(path: string, data: Buffer, chunk = 1024 * 1024): Promise<void> {
    const handle = await this.command<number>('guest-file-open', { path, mode: 'w' });
    for (let off = 0; off < data.length; off += chunk) {
      await this.command('guest-file-write', { handle, 'buf-b64': data.subarray(off, off + chunk).toString('base64') });
    }
    await this.command('guest-file-close', { handle });
  }

  /** Read a file the same way: open, guest-file-read base64 chunks until EOF, close. */
  async readFile(path: string, chunk = 1024 * 1024): Promise<Buffer> {
    const handle = await this.command<number>('guest-file-open', { path, mode: 'r' });
    const parts: Buffer[] = [];
    for (;;) {
      const r = await this.command<{ count: number; 'buf-b64': string; eof: boolean }>('guest-file-read', { handle, count: chunk });
      parts.push(Buffer.from(r['buf-b64'], 'base64'));
      if (r.eof || r.count === 0) break;
    }
    await this.command('guest-file-close', { handle });
    return Buffer.concat(parts);
  }

  /** guest-exec, then poll guest-exec-status until it exits (qemu-ga has no other way). */
  async exec(path: string, args: string[] = [], pollMs = 10): Promise<{ code: number; stdout: Buffer; polls: number }> {
    const { pid } = await this.command<{ pid: number }>('guest-exec', { path, arg: args, 'capture-output': true });
    for (let polls = 1; ; polls++) {
      const st = await this.command<{ exited: boolean; exitcode?: number; 'out-data'?: string }>('guest-exec-status', { pid });
      if (st.exited) return { code: st.exitcode ?? -1, stdout: Buffer.from(st['out-data'] ?? '', 'base64'), polls };
      await new Promise((r) => setTimeout(r, pollMs));
    }
  }

  close(): void {
    this.socket.destroy();
  }
}
