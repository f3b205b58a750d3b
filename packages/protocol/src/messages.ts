// The generated protobuf code (build step: pbjs/pbts from proto/porthole/v1).
import './numbers';
import { porthole } from '../generated/porthole';

export import v1 = porthole.v1;

/** Protocol (message schema) version carried in every hello. */
export const PROTOCOL_VERSION = 1;

/**
 * Content chunk size for file data and stdin, the smallest a stream sends: large enough for throughput,
 * small enough to interleave. A peer with room for more gets larger ones (Stream.chunkSize).
 */
export const CHUNK_SIZE = 128 * 1024;

/** The largest content chunk: fits the default frame (1 MiB + 4 KiB) with its envelope. */
export const MAX_CHUNK_SIZE = 1024 * 1024;
