import { v1, PortholeError } from '@porthole/protocol';
import { windowsShellArgv } from './windows/exec';

/** argv that runs a shell command line: /bin/sh -c on Unix, cmd.exe (or PowerShell) on Windows. */
export function shellArgv(line: string, shell: v1.ShellKind | null | undefined): string[] {
  if (process.platform === 'win32') return windowsShellArgv(line, shell);
  if (shell === v1.ShellKind.SHELL_KIND_POWERSHELL) {
    throw new PortholeError(v1.ErrorCode.ERROR_CODE_UNSUPPORTED, 'PowerShell command lines are for Windows guests; this agent runs /bin/sh');
  }
  return ['/bin/sh', '-c', line];
}
