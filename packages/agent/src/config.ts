import { readFileSync } from 'node:fs';
import { isAbsolute } from './paths';
import { windowsDefaults, WINDOWS_CONFIG_PATH } from './windows/defaults';
// smol-toml ships CommonJS next to its ES module, but its typings are ESM-only.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { parse } = require('smol-toml') as { parse(text: string): Record<string, unknown> };

/** The owner's settings, after defaults. Mirrors installers/agent.conf.example. */
export interface AgentConfig {
  fileWrite: { enabled: boolean; allow: string[]; deny: string[]; maxFileSize: number; allowFinalSymlink: boolean };
  fileRead: { enabled: boolean; allow: string[]; deny: string[] };
  exec: {
    enabled: boolean; users: string[]; groups: string[]; commands: string[]; envAllow: string[];
    maxConcurrent: number; secretArgs: string[]; spawnHelper: boolean;
  };
  payload: {
    enabled: boolean; runCommands: boolean; stateDir: string;
    /** Media Porthole did not build: mounted read-only and reported (label, files) to the host. */
    foreignMedia: boolean;
    /** Volume label → directory: the only foreign media applied, their files copied there. */
    foreignTargets: Record<string, string>;
  };
  transfers: { stateDir: string; abandonAfterSeconds: number; maxUnfinished: number };
  /** What one host may hold on its connection. */
  session: { maxStreams: number; maxOpenFiles: number; peerTimeoutSeconds: number };
  /** Nova-style requests in xenstore (data/host → data/guest), served with a xenstore channel only. */
  nova: { enabled: boolean };
  log: { file: string; level: string };
}

export const DEFAULT_CONFIG_PATH = process.platform === 'win32' ? WINDOWS_CONFIG_PATH : '/etc/porthole/agent.conf';

/** Audit log levels, most severe first (winston drops every line for a level it does not know). */
export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'];

export function defaultConfig(): AgentConfig {
  const config: AgentConfig = {
    fileWrite: { enabled: true, allow: ['/'], deny: ['/proc', '/sys', '/dev'], maxFileSize: 0, allowFinalSymlink: false },
    fileRead: { enabled: true, allow: ['/'], deny: ['/proc/kcore'] },
    exec: { enabled: true, users: [], groups: [], commands: [], envAllow: [], maxConcurrent: 64, secretArgs: [], spawnHelper: true },
    payload: { enabled: true, runCommands: true, stateDir: '/var/lib/porthole/payloads', foreignMedia: true, foreignTargets: {} },
    transfers: { stateDir: '/var/lib/porthole/transfers', abandonAfterSeconds: 86400, maxUnfinished: 64 },
    session: { maxStreams: 128, maxOpenFiles: 64, peerTimeoutSeconds: 30 },
    nova: { enabled: true },
    log: { file: '', level: 'info' },
  };
  return process.platform === 'win32' ? windowsDefaults(config) : config;
}

type Table = Record<string, unknown>;

const SCHEMA: Record<string, Record<string, 'bool' | 'strings' | 'size' | 'int' | 'string' | 'labels'>> = {
  file_write: { enabled: 'bool', allow: 'strings', deny: 'strings', max_file_size: 'size', allow_final_symlink: 'bool' },
  file_read: { enabled: 'bool', allow: 'strings', deny: 'strings' },
  exec: {
    enabled: 'bool', users: 'strings', groups: 'strings', commands: 'strings', env_allow: 'strings',
    max_concurrent: 'int', secret_args: 'strings', spawn_helper: 'bool',
  },
  payload: { enabled: 'bool', run_commands: 'bool', state_dir: 'string', foreign_media: 'bool', foreign_targets: 'labels' },
  transfers: { state_dir: 'string', abandon_after_seconds: 'int', max_unfinished: 'int' },
  session: { max_streams: 'int', max_open_files: 'int', peer_timeout_seconds: 'int' },
  nova: { enabled: 'bool' },
  log: { file: 'string', level: 'string' },
};

function parseSize(v: unknown, where: string): number {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v;
  if (typeof v === 'bigint' && v >= 0n) return Number(v);
  const m = typeof v === 'string' ? /^(\d+)\s*([KMGT]i?B?|B)?$/i.exec(v.trim()) : null;
  if (!m) throw new Error(`${where}: expected a size like 1048576 or "512 MiB", got ${JSON.stringify(v)}`);
  const unit = (m[2] ?? '').toUpperCase().replace(/I?B$/, '');
  const mult = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }[unit] ?? 1;
  return Number(m[1]) * mult;
}

function check(kind: string, v: unknown, where: string): unknown {
  switch (kind) {
    case 'bool':
      if (typeof v !== 'boolean') throw new Error(`${where}: expected true or false, got ${JSON.stringify(v)}`);
      return v;
    case 'strings':
      if (!Array.isArray(v) || v.some((s) => typeof s !== 'string')) throw new Error(`${where}: expected a list of strings`);
      return v;
    case 'int':
      if (typeof v !== 'number' && typeof v !== 'bigint') throw new Error(`${where}: expected a whole number`);
      if (Number(v) < 0 || !Number.isInteger(Number(v))) throw new Error(`${where}: expected a whole number ≥ 0`);
      return Number(v);
    case 'size':
      return parseSize(v, where);
    case 'labels': {
      // Volume label → absolute directory; labels compare case-insensitively, as blkid users expect.
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${where}: expected a table of volume label = "/directory"`);
      const seen = new Set<string>();
      for (const [label, dir] of Object.entries(v)) {
        if (label.trim() === '') throw new Error(`${where}: a volume label must not be empty`);
        if (seen.has(label.toUpperCase())) throw new Error(`${where}: label ${JSON.stringify(label)} given twice (labels compare case-insensitively)`);
        seen.add(label.toUpperCase());
        if (typeof dir !== 'string' || !dir.startsWith('/') || dir.split('/').includes('..')) {
          throw new Error(`${where}.${JSON.stringify(label)}: expected an absolute directory without "..", got ${JSON.stringify(dir)}`);
        }
      }
      return { ...v };
    }
    default:
      if (typeof v !== 'string') throw new Error(`${where}: expected a string`);
      return v;
  }
}

const camel = (s: string) => s.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

/** Parse config text; unknown sections/keys and wrong types are errors that name the line's key. */
export function parseConfig(text: string, source = 'agent.conf'): AgentConfig {
  let doc: Table;
  try {
    doc = parse(text) as Table;
  } catch (err) {
    throw new Error(`${source}: ${(err as Error).message}`);
  }
  const config = defaultConfig() as unknown as Record<string, Record<string, unknown>>;
  for (const [section, body] of Object.entries(doc)) {
    const keys = SCHEMA[section];
    if (!keys) throw new Error(`${source}: unknown section [${section}] (known: ${Object.keys(SCHEMA).join(', ')})`);
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new Error(`${source}: ${section} must be a [section]`);
    for (const [key, value] of Object.entries(body as Table)) {
      const kind = keys[key];
      if (!kind) throw new Error(`${source}: unknown key ${section}.${key} (known: ${Object.keys(keys).join(', ')})`);
      config[camel(section)][camel(key)] = check(kind, value, `${source}: ${section}.${key}`);
    }
  }
  const result = config as unknown as AgentConfig;
  for (const p of [...result.fileWrite.allow, ...result.fileWrite.deny, ...result.fileRead.allow, ...result.fileRead.deny]) {
    if (!isAbsolute(p)) throw new Error(`${source}: path prefixes must be absolute, got ${JSON.stringify(p)}`);
    if (p.split(process.platform === 'win32' ? /[\\/]/ : '/').includes('..')) throw new Error(`${source}: path prefixes must not contain "..": ${JSON.stringify(p)}`);
  }
  if (result.session.peerTimeoutSeconds < 1) throw new Error(`${source}: session.peer_timeout_seconds must be at least 1`);
  if (!LOG_LEVELS.includes(result.log.level)) throw new Error(`${source}: log.level must be ${LOG_LEVELS.join(', ')}`);
  return result;
}

/** Load the config file; a missing file means the defaults (everything on). */
export function loadConfig(path: string): { config: AgentConfig; found: boolean } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { config: defaultConfig(), found: false };
    throw new Error(`cannot read ${path}: ${(err as Error).message}`);
  }
  return { config: parseConfig(text, path), found: true };
}
