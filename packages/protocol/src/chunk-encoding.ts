// Zero-copy encoding of the hot message: an Envelope carrying one content
// Chunk. protobufjs copies the data into its writer and framing would copy it
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

/** Encoded envelope as parts whose concatenation is the protobuf encoding. */
export function encodeStreamMessage(streamId: number, message: v1.StreamMessage.$Properties): Buffer[] {
  const chunk = message.chunk;
  const data = chunk?.data;
  const onlyChunk = chunk && Object.keys(message).every((k) => k === 'chunk' || (message as Record<string, unknown>)[k] == null);
  if (!onlyChunk || !data || data.length < MIN_FAST_BYTES) {
    const encoded = v1.Envelope.encode({ streamId, message }).finish();
    return [Buffer.from(encoded.buffer, encoded.byteOffset, encoded.length)];
  }
  const offset = Number(chunk.offset ?? 0);
  // Chunk { 1: offset (varint), 2: data (bytes) }
  const chunkLen = (offset ? 1 + varintLength(offset) : 0) + 1 + varintLength(data.length) + data.length;
  // StreamMessage { 1: chunk }
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
  prefix[p++] = 0x0a; // StreamMessage.chunk = 1
  p = writeVarint(prefix, p, chunkLen);
  if (offset) {
    prefix[p++] = 0x08; // Chunk.offset = 1
    p = writeVarint(prefix, p, offset);
  }
  prefix[p++] = 0x12; // Chunk.data = 2
  p = writeVarint(prefix, p, data.length);
  const body = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.length);
  return [prefix.subarray(0, p), body];
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
