import { existsSync } from 'node:fs';
import { join } from 'node:path';

const AGENT_DIST = join(__dirname, '..', '..', 'agent', 'dist');

/** The agent bundle `npm run build` makes (run with node in the guest). */
export function agentBundlePath(): string {
  const path = join(AGENT_DIST, 'porthole-agent.bundle.cjs');
  if (!existsSync(path)) throw new Error(`${path} is missing: run npm run build first`);
  return path;
}

/** The single executable `npm run build:sea` makes, when it exists. */
export function agentExecutablePath(): string | undefined {
  const path = join(AGENT_DIST, 'porthole-agent');
  return existsSync(path) ? path : undefined;
}
