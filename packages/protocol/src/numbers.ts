// 64-bit fields (offsets, sizes) decode as plain numbers, not Long objects: sizes
// stay below 2^53. Must run before the generated code is loaded.
import * as protobuf from 'protobufjs/minimal';

protobuf.util.Long = undefined as unknown as typeof protobuf.util.Long;
protobuf.configure();
