// Commands on Windows: CreateProcess through Node's child_process (no porthole-spawn),
// `--shell` as `cmd.exe /d /s /c "LINE"` (or PowerShell when asked), and no run-as.
import { v1, PortholeError } from '@porthole/protocol';

const E = v1.ErrorCode;

/** cmd.exe, as %ComSpec% names it. */
const cmd = () => process.env.ComSpec || 'cmd.exe';

/**
 * argv for a shell command line. cmd.exe parses its own command line (not by the C runtime's
 * rules Node quotes for), so the line goes to it verbatim, as Node's own `shell` option does.
 */
export function windowsShellArgv(line: string, shell: v1.ShellKind | null | undefined): string[] {
  if (shell === v1.ShellKind.SHELL_KIND_POWERSHELL) {
    return ['powershell.exe', '-NoLogo', '-NoProfile', '-NonInteractive', '-Command', line];
  }
  return [cmd(), '/d', '/s', '/c', `"${line}"`];
}

/** True for the cmd.exe argv windowsShellArgv makes: spawned with its line verbatim. */
export function isVerbatimCmd(file: string, args: readonly string[]): boolean {
  return /^(?:.*\\)?cmd(?:\.exe)?$/i.test(file) && args[0] === '/d' && args[1] === '/s' && args[2] === '/c';
}

/**
 * Refused on Windows after the owner's policy had its say: running as another account
 * would need CreateProcessAsUser with that account's token (its password, or a service's
 * privileges this agent does not use), and Windows processes have no POSIX group.
 */
export function checkWindowsExec(req: v1.ExecRequest.$Properties): void {
  const named = (p: v1.Principal.$Properties | null | undefined) => !!p && (!!p.name || p.numeric != null);
  if (named(req.user)) {
    throw new PortholeError(E.ERROR_CODE_UNSUPPORTED, `running commands as another account (${req.user!.name || req.user!.numeric}) is not supported by the Windows agent: commands run as the agent's own account`);
  }
  if (named(req.group)) throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, 'Windows processes have no POSIX group; leave the group unset');
}
