import { createHash, randomUUID } from 'node:crypto';
import { v1, Session, Stream } from '@porthole/protocol';

// A thin broker side for the agent's tests: each request as the protocol's
// conventions describe it (packages/protocol/API.md), nothing more.

export const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

/** Read the agent's answer messages up to its end(); rejects with the agent's PortholeError. */
async function answers(stream: Stream): Promise<v1.StreamMessage[]> {
  const out: v1.StreamMessage[] = [];
  for await (const m of stream) out.push(m);
  return out;
}

export interface WriteOptions {
  requestId?: string;
  /** Data per message; default the stream's (the largest the agent's window takes). */
  chunkSize?: number;
  /** Send content from this offset (a resume). */
  from?: number;
  /** sha256 to announce in fileWriteEnd; default the content's. */
  sha256?: string;
  /** Called after each chunk was sent (with the bytes sent so far). */
  afterChunk?: (sent: number) => Promise<void> | void;
}

export async function writeFile(session: Session, req: v1.FileWriteRequest.$Properties, content: Buffer, opts: WriteOptions = {}): Promise<v1.FileWriteResult> {
  const stream = session.openStream({ requestId: opts.requestId ?? randomUUID(), fileWrite: req });
  const reply = answers(stream);
  reply.catch(() => undefined); // awaited below; the sends may fail first
  const size = opts.chunkSize ?? stream.chunkSize;
  try {
    for (let off = opts.from ?? 0; off < content.length; off += size) {
      await stream.send({ chunk: { offset: off, data: content.subarray(off, off + size) } });
      await opts.afterChunk?.(Math.min(off + size, content.length));
    }
    await stream.send({ fileWriteEnd: { sha256: opts.sha256 ?? sha256(content) } });
    stream.end();
  } catch {
    // the agent refused early: its reason comes with the answer
  }
  const msgs = await reply;
  const result = msgs.find((m) => m.body === 'fileWriteResult');
  if (!result) throw new Error(`no fileWriteResult in ${JSON.stringify(msgs.map((m) => m.body))}`);
  return result.fileWriteResult as v1.FileWriteResult;
}

export async function transferStatus(session: Session, requestId: string, path: Buffer): Promise<v1.FileTransferStatus> {
  const stream = session.openStream({ requestId, transferStatus: { path } });
  stream.end();
  const msgs = await answers(stream);
  return msgs[0].transferStatus as v1.FileTransferStatus;
}

export async function readFile(session: Session, req: v1.FileReadRequest.$Properties): Promise<{ header: v1.FileReadHeader; data: Buffer; chunks: Array<{ offset: number; length: number }>; result: v1.FileReadResult }> {
  const stream = session.openStream({ fileRead: req });
  stream.end();
  const msgs = await answers(stream);
  const chunks = msgs.filter((m) => m.body === 'chunk').map((m) => m.chunk as v1.Chunk);
  return {
    header: msgs.find((m) => m.body === 'fileReadHeader')!.fileReadHeader as v1.FileReadHeader,
    data: Buffer.concat(chunks.map((c) => Buffer.from(c.data))),
    chunks: chunks.map((c) => ({ offset: Number(c.offset), length: c.data.length })),
    result: msgs.find((m) => m.body === 'fileReadResult')!.fileReadResult as v1.FileReadResult,
  };
}

export async function info(session: Session): Promise<v1.InfoResult> {
  const stream = session.openStream({ info: {} });
  stream.end();
  return (await answers(stream))[0].info as v1.InfoResult;
}

export interface ExecOutcome {
  pid: number;
  /** Output in the order it arrived. */
  output: Array<{ fd: v1.OutputStream; data: Buffer }>;
  stdout: Buffer;
  stderr: Buffer;
  exit: v1.ExecExit;
}

export interface ExecOptions {
  /** stdin pieces to send, then close stdin (sets req.stdin). */
  stdin?: Buffer[];
  /** Keep our side open after sending (to send signals or cancel later through `control`). */
  control?: (stream: Stream, started: Promise<number>) => Promise<void> | void;
  /** Called for each output message (e.g. to slow the reader down). */
  onOutput?: (data: Buffer, fd: v1.OutputStream) => Promise<void> | void;
  /** Keep only the byte counts of output (floods). */
  discardOutput?: boolean;
}

export async function exec(session: Session, req: v1.ExecRequest.$Properties, opts: ExecOptions = {}): Promise<ExecOutcome> {
  const stream = session.openStream({ exec: { ...req, stdin: req.stdin || !!opts.stdin } });
  let onStarted!: (pid: number) => void;
  const started = new Promise<number>((r) => (onStarted = r));
  const out: ExecOutcome = { pid: 0, output: [], stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), exit: undefined as unknown as v1.ExecExit };
  const sending = (async () => {
    for (const piece of opts.stdin ?? []) await stream.send({ chunk: { data: piece } });
    if (opts.control) await opts.control(stream, started);
    else stream.end();
  })();
  sending.catch(() => undefined);
  const parts: Record<number, Buffer[]> = { 0: [], 1: [] };
  for await (const m of stream) {
    if (m.body === 'execStarted') {
      out.pid = (m.execStarted as v1.ExecStarted).pid;
      onStarted(out.pid);
    } else if (m.body === 'execOutput') {
      const { fd, data } = m.execOutput as v1.ExecOutput;
      await opts.onOutput?.(Buffer.from(data), fd);
      if (!opts.discardOutput) {
        out.output.push({ fd, data: Buffer.from(data) });
        parts[fd].push(Buffer.from(data));
      }
    } else if (m.body === 'execExit') {
      out.exit = m.execExit as v1.ExecExit;
    }
  }
  await sending;
  out.stdout = Buffer.concat(parts[0]);
  out.stderr = Buffer.concat(parts[1]);
  return out;
}
