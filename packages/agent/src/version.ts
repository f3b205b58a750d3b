// Replaced at bundle time by esbuild's define; read from package.json otherwise.
declare const __PORTHOLE_AGENT_VERSION__: string | undefined;

function packageVersion(): string {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return (require('../package.json') as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

export const AGENT_VERSION: string =
  `porthole-agent ${typeof __PORTHOLE_AGENT_VERSION__ === 'string' ? __PORTHOLE_AGENT_VERSION__ : packageVersion()}`;
