export { v1, PROTOCOL_VERSION, CHUNK_SIZE, MAX_CHUNK_SIZE } from './messages';
export { PortholeError, errorCodeName, errors } from './errors';
export { crc32c, crc32cImplementation, whenCrc32cChosen } from './crc32c';
export {
  encodeFrame, frameHeader, FRAME_FLAG_NO_PAYLOAD_CRC, FrameDecoder, FrameDecoderOptions, FrameDecoderStats,
  FRAME_MAGIC, FRAME_VERSION, FRAME_HEADER_SIZE, DEFAULT_MAX_FRAME_SIZE, DEFAULT_FRAME_TIMEOUT_MS,
} from './frame';
export { Stream, StreamEndpoint, chunkSizeFor } from './stream';
export { Session, SessionOptions, SessionLogger, DEFAULT_STREAM_WINDOW, SLOW_PORT_STREAM_WINDOW, SERIAL_STREAM_WINDOW, DEFAULT_MAX_BACKLOG } from './session';
export { encodeStreamMessage, encodeOutputParts, bytesOf, withStreamId } from './chunk-encoding';
export { RepeatLimitedLogger, RepeatLimit } from './log-limit';
