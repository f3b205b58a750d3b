import * as http from 'node:http';

/** One NDJSON line of a task's output stream. */
export interface OutputLine {
  type: 'output' | 'gap' | 'progress' | 'end' | 'overrun';
  fd?: string;
  offset?: number;
  next?: number;
  data?: string;
  text?: string;
  task?: { id: string; status: string; result?: Record<string, unknown>; error?: { code: string; message: string } };
  [k: string]: unknown;
}

/** Read an NDJSON response line by line, each with the time it arrived; stop early when `until` says so. */
export async function readLines(res: Response, until: (l: OutputLine) => boolean = () => false): Promise<Array<OutputLine & { at: number }>> {
  const lines: Array<OutputLine & { at: number }> = [];
  let pending = '';
  const decoder = new TextDecoder();
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    pending += decoder.decode(chunk, { stream: true });
    let nl;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = { ...(JSON.parse(pending.slice(0, nl)) as OutputLine), at: Date.now() };
      pending = pending.slice(nl + 1);
      lines.push(line);
      if (until(line)) return lines;
    }
  }
  return lines;
}

/** An HTTP request over a Unix socket (fetch cannot dial one). */
export function unixRequest(socketPath: string, method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, method, path, headers: body === undefined ? {} : { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (b: Buffer) => (text += b.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: text ? JSON.parse(text) : undefined }));
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}
