// Finding and running the host tools that write images (xorriso, genisoimage,
// mkfs.vfat, mtools).
import { execFile } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';

/** The Debian package that ships each tool, for the "not installed" message. */
export const TOOL_PACKAGES: Readonly<Record<string, string>> = {
  xorriso: 'xorriso',
  genisoimage: 'genisoimage',
  'mkfs.vfat': 'dosfstools',
  'mkfs.fat': 'dosfstools',
  mcopy: 'mtools',
};

export class ToolMissingError extends Error {
  constructor(readonly tools: string[]) {
    const pkgs = [...new Set(tools.map((t) => `"${TOOL_PACKAGES[t] ?? t}"`))].join(' or ');
    super(
      tools.length === 1
        ? `${tools[0]} not found on PATH: install the Debian package ${pkgs}`
        : `none of ${tools.join(', ')} found on PATH: install the Debian package ${pkgs}`,
    );
    this.name = 'ToolMissingError';
  }
}

export interface ToolOptions {
  /** Directories to search (delimiter-separated) instead of $PATH plus /usr/sbin and /sbin, where mkfs lives. */
  searchPath?: string;
}

function searchDirs(options: ToolOptions): string[] {
  const path = options.searchPath ?? `${process.env.PATH ?? ''}${delimiter}/usr/sbin${delimiter}/sbin`;
  return path.split(delimiter).filter((d) => d !== '');
}

/** Full path of the first of `names` found, or undefined. */
export function findTool(names: string[], options: ToolOptions = {}): string | undefined {
  for (const name of names) {
    for (const dir of searchDirs(options)) {
      const candidate = join(dir, name);
      try {
        accessSync(candidate, constants.X_OK);
        if (statSync(candidate).isFile()) return candidate;
      } catch {
        // not here; keep looking
      }
    }
  }
  return undefined;
}

export function requireTool(names: string[], options: ToolOptions = {}): string {
  const found = findTool(names, options);
  if (!found) throw new ToolMissingError(names);
  return found;
}

/** Runs a tool; a failure names the tool, its exit status and the end of its stderr. */
export function runTool(tool: string, args: string[], env?: NodeJS.ProcessEnv): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(
      tool,
      args,
      { env: { ...process.env, ...env }, timeout: 10 * 60_000, maxBuffer: 4 * 1024 * 1024 },
      (err, _stdout, stderr) => {
        if (!err) return resolve();
        const tail = stderr.trim().split('\n').slice(-5).join(' | ');
        const status = err.killed ? `killed (${err.signal ?? 'timeout'})` : `exit code ${String(err.code)}`;
        reject(new Error(`${tool} failed: ${status}${tail ? `: ${tail}` : ''}`));
      },
    );
  });
}
