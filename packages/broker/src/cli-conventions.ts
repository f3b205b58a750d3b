// The conventions every `porthole` command follows, applied once to the whole
// command tree: the broker's own commands and those other packages register
// (payload, image, boot-iso). Those packages only throw — commander's
// InvalidArgumentError for a usage error, any other error for a failure — and
// read --json with optsWithGlobals(); printing and exit codes happen here.
import type { Command } from 'commander';

/** Exit codes of `porthole` (besides a remote command's own code for `exec`). */
export const EXIT = {
  OK: 0,
  FAILED: 1,
  USAGE: 2,
  UNREACHABLE: 3,
  POLICY: 4,
  TIMEOUT: 124,
  INTERRUPTED: 130,
} as const;

export interface CliOutput {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
}

/**
 * commander's errors, recognised by shape: each package has its own copy of
 * commander, so `instanceof` would miss the errors another copy throws.
 */
interface CommanderLike {
  code: string;
  exitCode: number;
  message: string;
  /** The command whose parsing failed (set by the exit override below). */
  command?: Command;
}

function commanderError(err: unknown): CommanderLike | undefined {
  const e = err as Partial<CommanderLike> | null;
  return typeof e?.code === 'string' && e.code.startsWith('commander.') && typeof e.exitCode === 'number' ? (e as CommanderLike) : undefined;
}

/** Every command of the tree, parents first (commander's implicit `help` command is not one of them). */
export function commandTree(root: Command): Command[] {
  return [root, ...root.commands.flatMap((c) => commandTree(c))];
}

/** The words that call a command: "porthole payload build". */
export function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/** --json anywhere before "--" (the words after it belong to a remote command). */
export function wantsJson(args: readonly string[]): boolean {
  const end = args.indexOf('--');
  return (end < 0 ? args : args.slice(0, end)).includes('--json');
}

/**
 * Makes every command throw its parse errors instead of exiting, print nothing
 * itself on an error (not the whole help either: a usage error gets one line and
 * a hint), and write help to `io`.
 */
export function applyCliConventions(program: Command, io: CliOutput): void {
  for (const cmd of commandTree(program)) {
    cmd.configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s), outputError: () => undefined });
    cmd.showHelpAfterError(false);
    cmd.exitOverride((err) => {
      throw Object.assign(err, { command: cmd });
    });
  }
}

/**
 * Prints a usage error (text on stderr, or one JSON object on stdout with
 * --json) and returns the exit code; undefined when `err` is not commander's.
 * --help and --version end here too, with 0.
 */
export function reportUsageError(err: unknown, json: boolean, io: CliOutput): number | undefined {
  const e = commanderError(err);
  if (!e) return undefined;
  if (e.exitCode === 0) return EXIT.OK;
  // Help shown for a command that needs a subcommand: the help itself is the message.
  if (e.code === 'commander.help') return EXIT.USAGE;
  const message = e.message.replace(/^error: /, '');
  if (json) io.stdout.write(`${JSON.stringify({ ok: false, error: { code: 'USAGE', message } })}\n`);
  else {
    const path = e.command ? commandPath(e.command) : undefined;
    io.stderr.write(`${path ?? 'porthole'}: ${message}\n`);
    if (path) io.stderr.write(`Try '${path} --help' for usage and examples.\n`);
  }
  return EXIT.USAGE;
}
