// Builds `porthole` (CLI, broker daemon, REST API) as one executable with Node's Single
// Executable Applications, for the host package: packages/broker/dist/porthole.
//   node packages/broker/scripts/sea.mjs [--out FILE]
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { buildSingleExecutable } from '../../../scripts/single-executable.mjs';

const brokerDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values: opts } = parseArgs({ options: { out: { type: 'string', default: join(brokerDir, 'dist', 'porthole') } } });

const bundle = join(brokerDir, 'dist', 'porthole.bundle.cjs');
execFileSync(process.execPath, [join(brokerDir, 'scripts', 'bundle.mjs'), bundle], { stdio: 'inherit' });
buildSingleExecutable({
  bundle,
  out: opts.out,
  // Loaded beside the executable by the serial transport.
  fromDisk: ['serialport'],
  // ajv (fastify's validator) writes require() into code strings for standalone validators; never called here.
  quoted: ['ajv/', 'ajv-formats/'],
});
