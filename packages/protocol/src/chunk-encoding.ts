// Zero-copy encoding of the hot messages: an Envelope carrying one content
// Chunk or one piece of a command's output. protobufjs copies the data into its writer and framing would copy it
// again; here the data buffer is sent as it is, after a small prefix with the
// same bytes protobufjs would have produced (the reader decodes it normally).
import { v1 } from './messages';

/** Below this size the generic encoder is as good. */
const MIN_FAST_BYTES = 4096;

function varintLength(n: number): number {
  let len = 1;
  while (n >= 128) {
    n = Math.floor(n / 128);
    len++;
  }
  return len;
}

function writeVarint(buf: Buffer, pos: number, n: number): number {
  while (n >= 128) {
    buf[pos++] = (n % 128) | 0x80;
    n = Math.floor(n / 128);
  }
  buf[pos++] = n;
  return pos;
}

/** StreamMessage.exec_output: field 7, length-delimited. */
const OUTPUT_TAG = 0x3a;

/**
 * The bulk bodies, each { 1: varint (omitted when 0), 2: bytes data }: a content Chunk (offset) and
 * a command's output (fd), with their StreamMessage field tags.
 */
const BULK_BODIES = [
  { key: 'chunk', tag: 0x0a, head: (m: v1.StreamMessage.$Properties) => Number(m.chunk?.offset ?? 0), data: (m: v1.StreamMessage.$Properties) => m.chunk?.data }, // field 1
  { key: 'execOutput', tag: OUTPUT_TAG, head: (m: v1.StreamMessage.$Properties) => m.execOutput?.fd ?? 0, data: (m: v1.StreamMessage.$Properties) => m.execOutput?.data }, // field 7
] as const;

/** Encoded envelope as parts whose concatenation is the protobuf encoding. */
export function encodeStreamMessage(streamId: number, message: v1.StreamMessage.$Properties): Buffer[] {
  const body = BULK_BODIES.find((b) => message[b.key]);
  const data = body?.data(message);
  const onlyBody = body && Object.keys(message).every((k) => k === body.key || (message as Record<string, unknown>)[k] == null);
  if (!onlyBody || !data || data.length < MIN_FAST_BYTES) return encodeGeneric(streamId, message);
  return encodeBulk(streamId, body.tag, body.head(message), [Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.length)], data.length);
}

/**
 * A command's output given in pieces (a record of the spawn helper read from its pipe in several reads),
 * encoded as one ExecOutput without joining them: the pieces follow the prefix as they are.
 */
export function encodeOutputParts(streamId: number, fd: v1.OutputStream, data: readonly Buffer[]): Buffer[] {
  let length = 0;
  for (const part of data) length += part.length;
  if (data.length === 1 || length < MIN_FAST_BYTES) {
    return encodeStreamMessage(streamId, { execOutput: { fd, data: data.length === 1 ? data[0] : Buffer.concat(data, length) } });
  }
  return encodeBulk(streamId, OUTPUT_TAG, fd, data, length);
}

function encodeGeneric(streamId: number, message: v1.StreamMessage.$Properties): Buffer[] {
  const encoded = v1.Envelope.encode({ streamId, message }).finish();
  return [Buffer.from(encoded.buffer, encoded.byteOffset, encoded.length)];
}

/** The bytes protobufjs would write before a bulk body's data, then the data's parts as they are. */
function encodeBulk(streamId: number, tag: number, head: number, data: readonly Buffer[], length: number): Buffer[] {
  // Chunk { 1: offset (varint), 2: data (bytes) }, ExecOutput { 1: fd (varint), 2: data (bytes) }
  const chunkLen = (head ? 1 + varintLength(head) : 0) + 1 + varintLength(length) + length;
  // StreamMessage { 1: chunk } or { 7: exec_output }
  const messageLen = 1 + varintLength(chunkLen) + chunkLen;
  const prefix = Buffer.allocUnsafe(48);
  let p = 0;
  if (streamId) {
    prefix[p++] = 0x08; // Envelope.stream_id = 1, varint
    p = writeVarint(prefix, p, streamId);
  }
  prefix[p++] = 0xb2; // Envelope.message = 22, length-delimited: tag 178 as varint
  prefix[p++] = 0x01;
  p = writeVarint(prefix, p, messageLen);
  prefix[p++] = tag;
  p = writeVarint(prefix, p, chunkLen);
  if (head) {
    prefix[p++] = 0x08; // field 1, varint
    p = writeVarint(prefix, p, head);
  }
  prefix[p++] = 0x12; // field 2 (data), length-delimited
  p = writeVarint(prefix, p, length);
  return [prefix.subarray(0, p), ...data];
}

/**
 * Decoded bytes (a chunk's data, an output's data) as a Buffer without copying
 * them: the decoder already hands out a view of the frame, which holds nothing else.
 */
export function bytesOf(data: Uint8Array | null | undefined): Buffer {
  if (!data) return Buffer.alloc(0);
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * An envelope received as stream `fromId`, as parts that encode it under stream `toId`: a new
 * leading stream_id field and the rest of the bytes as they are (no copy). Every encoder of this
 * protocol writes stream_id first; an envelope whose first field is something else (or whose
 * leading stream_id is not the one it was read as, so another follows it) is decoded and encoded again.
 */
export function withStreamId(payload: Buffer, fromId: number, toId: number): Buffer[] {
  if (payload[0] === 0x08) {
    // The leading varint: at most 5 bytes for a uint32.
    let value = 0;
    let end = 0;
    for (let p = 1, scale = 1; p < Math.min(payload.length, 6); p++, scale *= 128) {
      value += (payload[p] & 0x7f) * scale;
      if ((payload[p] & 0x80) === 0) {
        end = p + 1;
        break;
      }
    }
    if (end > 0 && value === fromId) {
      const prefix = Buffer.allocUnsafe(6);
      prefix[0] = 0x08;
      return [prefix.subarray(0, writeVarint(prefix, 1, toId)), payload.subarray(end)];
    }
  }
  const envelope = v1.Envelope.decode(payload);
  envelope.streamId = toId;
  const encoded = v1.Envelope.encode(envelope).finish();
  return [Buffer.from(encoded.buffer, encoded.byteOffset, encoded.length)];
}
