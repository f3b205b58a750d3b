// The broker daemon as the scale bench runs it: `porthole serve` (from the CLI module given, so an
// earlier checkout's can run for comparison), plus a full garbage collection on SIGUSR2 (node
// --expose-gc), so the bench reads the memory the VM sessions hold rather than garbage not yet collected.
//   node --expose-gc scale-daemon.js CLI_JS SERVE_ARGS...
const [cli, ...serveArgs] = process.argv.slice(2);

process.on('SIGUSR2', () => {
  (globalThis as { gc?: () => void }).gc?.();
  process.stdout.write('collected\n');
});

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { main } = require(cli) as { main(argv: string[]): Promise<void> };
void main([process.argv[0], 'porthole', 'serve', ...serveArgs]);
