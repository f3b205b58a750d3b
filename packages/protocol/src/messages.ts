// The generated protobuf code (build step: pbjs/pbts from proto/porthole/v1).
import './numbers';
import { porthole } from '../generated/porthole';

export import v1 = porthole.v1;

/** Protocol (message schema) version carried in every hello. */
export const PROTOCOL_VERSION = 1;

/** Content chunk size for file data and stdin: large enough for throughput, small enough to interleave. */
export const CHUNK_SIZE = 128 * 1024;
