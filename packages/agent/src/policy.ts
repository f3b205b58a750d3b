import { basename as pathBasename } from 'node:path';
import { v1, PortholeError } from '@porthole/protocol';
import { AgentConfig } from './config';
import { isWithin, normalize, showPath } from './paths';

const denied = (message: string, rule: string, path?: Uint8Array) =>
  new PortholeError(v1.ErrorCode.ERROR_CODE_POLICY_DENIED, message, { rule, path });

type Area = 'file_write' | 'file_read';

/**
 * Environment variables a request may not set unless exec.env_allow names them: they change what a
 * command loads or runs besides its own code, so an allowed command would become another one.
 * (Names, or patterns with * and ?; installers/agent.conf.example lists them for the owner.)
 */
export const LOADER_ENV: readonly string[] = [
  // The dynamic loader and the C library: glibc's list of variables it ignores for setuid programs.
  'LD_*', 'GCONV_PATH', 'GETCONF_DIR', 'GLIBC_TUNABLES', 'HOSTALIASES', 'LOCALDOMAIN', 'LOCPATH', 'MALLOC_TRACE',
  'NIS_PATH', 'NLSPATH', 'RESOLV_HOST_CONF', 'RES_OPTIONS', 'TZDIR',
  // Shells: start-up files, imported functions, word splitting, traced prompts.
  'BASH_ENV', 'ENV', 'BASH_FUNC_*', 'SHELLOPTS', 'BASHOPTS', 'IFS', 'PS4', 'PROMPT_COMMAND',
  // Where programs read their configuration (which can name programs to run).
  'HOME', 'XDG_CONFIG_HOME', 'XDG_CONFIG_DIRS',
  // Interpreters and runtimes: module paths, start-up code, options.
  'PYTHONPATH', 'PYTHONHOME', 'PYTHONSTARTUP', 'PYTHONUSERBASE', 'PYTHONPLATLIBDIR', 'PYTHONINSPECT', 'PYTHONBREAKPOINT',
  'PYTHONWARNINGS', 'PYTHONPYCACHEPREFIX', 'PERL5LIB', 'PERLLIB', 'PERL5OPT', 'PERL5DB', 'RUBYLIB', 'RUBYOPT',
  'NODE_OPTIONS', 'NODE_PATH', 'JAVA_TOOL_OPTIONS', 'JDK_JAVA_OPTIONS', '_JAVA_OPTIONS', 'CLASSPATH',
  'LUA_INIT*', 'LUA_PATH*', 'LUA_CPATH*', 'TCLLIBPATH', 'PHPRC', 'PHP_INI_SCAN_DIR',
  // Programs other programs start by the name in a variable.
  'EDITOR', 'VISUAL', 'PAGER', 'MANPAGER', 'LESSOPEN', 'LESSCLOSE', 'SSH_ASKPASS', 'SUDO_ASKPASS',
  'GIT_CONFIG*', 'GIT_EXEC_PATH', 'GIT_SSH', 'GIT_SSH_COMMAND', 'GIT_ASKPASS', 'GIT_PAGER', 'GIT_EDITOR', 'GIT_EXTERNAL_DIFF',
];

/** `*` any run of characters, `?` one character; the rest literal. */
function globMatch(pattern: string, text: string): boolean {
  const re = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${re}$`, 's').test(text);
}

/** The owner's policy as the handlers apply it. */
export class Policy {
  private readonly prefixes: Record<Area, { allow: Buffer[]; deny: Buffer[] }>;

  constructor(readonly config: AgentConfig) {
    const b = (list: string[]) => list.map((p) => normalize(Buffer.from(p)));
    this.prefixes = {
      file_write: { allow: b(config.fileWrite.allow), deny: b(config.fileWrite.deny) },
      file_read: { allow: b(config.fileRead.allow), deny: b(config.fileRead.deny) },
    };
  }

  capabilities(): v1.Capability[] {
    const c = this.config;
    const out: v1.Capability[] = [];
    if (c.fileWrite.enabled) out.push(v1.Capability.CAPABILITY_FILE_WRITE);
    if (c.fileRead.enabled) out.push(v1.Capability.CAPABILITY_FILE_READ);
    if (c.exec.enabled) out.push(v1.Capability.CAPABILITY_EXEC);
    if (c.payload.enabled) out.push(v1.Capability.CAPABILITY_PAYLOAD);
    return out;
  }

  limits(): v1.PolicyLimits.$Properties {
    const c = this.config;
    return {
      writeAllowPrefixes: this.prefixes.file_write.allow,
      writeDenyPrefixes: this.prefixes.file_write.deny,
      readAllowPrefixes: this.prefixes.file_read.allow,
      readDenyPrefixes: this.prefixes.file_read.deny,
      maxFileSize: c.fileWrite.maxFileSize,
      execUsers: c.exec.users,
      execAllowCommands: c.exec.commands,
      maxConcurrentExecs: c.exec.maxConcurrent,
      allowFinalSymlink: c.fileWrite.allowFinalSymlink,
      payloadCommands: c.payload.runCommands,
      execGroups: c.exec.groups,
      execEnvAllow: c.exec.envAllow,
      execEnvRefused: [...LOADER_ENV],
      maxStreams: c.session.maxStreams,
      maxOpenFiles: c.session.maxOpenFiles,
      peerTimeoutSeconds: c.session.peerTimeoutSeconds,
    };
  }

  requireEnabled(capability: 'file_write' | 'file_read' | 'exec' | 'payload'): void {
    const on = {
      file_write: this.config.fileWrite.enabled,
      file_read: this.config.fileRead.enabled,
      exec: this.config.exec.enabled,
      payload: this.config.payload.enabled,
    }[capability];
    if (!on) throw denied(`${capability.replace('_', ' ')} is disabled by the guest's owner`, `${capability}.enabled = false`);
  }

  /** A normalised path is inside an allowed prefix and outside every denied one. */
  checkPath(area: Area, path: Buffer): void {
    const { allow, deny } = this.prefixes[area];
    const what = area === 'file_write' ? 'writing' : 'reading';
    const d = deny.find((p) => isWithin(path, p));
    if (d) throw denied(`${what} ${showPath(path)} is refused by the guest's owner`, `${area}.deny contains ${showPath(d)}`, path);
    if (!allow.some((p) => isWithin(path, p))) {
      throw denied(`${what} ${showPath(path)} is outside the prefixes the guest's owner allows`, `${area}.allow = [${allow.map(showPath).join(', ')}]`, path);
    }
  }

  /**
   * `real` is where `requested` really is, links resolved: it must be allowed too. A link inside an
   * allowed prefix must not lead out of it (nor mkdir, nor the write).
   */
  checkRealLocation(area: Area, real: Buffer, requested: Buffer): void {
    if (real.equals(requested)) return;
    try {
      this.checkPath(area, real);
    } catch (err) {
      const e = err as PortholeError;
      throw denied(`${showPath(requested)} escapes through a symbolic link to ${showPath(real)}`, e.rule ?? `${area}.allow`, requested);
    }
  }

  checkSize(size: number): void {
    const max = this.config.fileWrite.maxFileSize;
    if (max > 0 && size > max) throw denied(`${size} bytes is over the guest owner's limit of ${max} bytes`, `file_write.max_file_size = ${max}`);
  }

  checkExec(argv0: string, userName: string | undefined): void {
    const { users, commands } = this.config.exec;
    if (users.length && !users.includes(userName ?? 'root')) {
      throw denied(`running commands as ${userName ?? 'root'} is refused by the guest's owner`, `exec.users = [${users.join(', ')}]`);
    }
    if (commands.length && !commands.includes(argv0) && !commands.includes(pathBasename(argv0))) {
      throw denied(`command ${argv0} is not in the guest owner's allow-list`, `exec.commands = [${commands.join(', ')}]`);
    }
  }

  /**
   * A command runs with its user's primary group unless the request names one: then it must be one
   * of that user's own groups (primary or supplementary) or match exec.groups.
   */
  checkGroup(gid: number, groupName: string, user: { name: string; groups: readonly number[] }): void {
    if (user.groups.includes(gid)) return;
    const { groups } = this.config.exec;
    if (groups.some((p) => globMatch(p, groupName) || globMatch(p, String(gid)))) return;
    throw denied(`running commands as ${user.name} with group ${groupName} is refused by the guest's owner: it is not one of ${user.name}'s groups`,
      groups.length ? `exec.groups = [${groups.join(', ')}]` : "exec.groups = [] (only the user's own groups)");
  }

  /** Names a request sets in the environment: none may change what the command loads, unless the owner allows it. */
  checkEnv(names: readonly string[]): void {
    for (const name of names) {
      if (!name || name.includes('=')) {
        throw new PortholeError(v1.ErrorCode.ERROR_CODE_INVALID_ARGUMENT, `environment variable name ${JSON.stringify(name)} is empty or contains "="`);
      }
      const refusedBy = LOADER_ENV.find((p) => globMatch(p, name));
      if (!refusedBy || this.config.exec.envAllow.some((p) => globMatch(p, name))) continue;
      throw denied(`setting ${name} is refused by the guest's owner: it changes what the command loads or runs (matches ${refusedBy})`,
        `exec.env_allow = [${this.config.exec.envAllow.join(', ')}]`);
    }
  }

  /**
   * argv as logged: values that follow (or are joined to) a secret option are
   * redacted, and so is every occurrence of a secret value (e.g. inside a shell command line).
   */
  redactArgv(argv: string[], secretValues: string[] = []): string[] {
    const secret = this.config.exec.secretArgs;
    const out: string[] = [];
    for (let i = 0; i < argv.length; i++) {
      const a = argv[i];
      const joined = secret.find((s) => a.startsWith(`${s}=`));
      if (joined) out.push(`${joined}=***`);
      else if (i > 0 && secret.includes(argv[i - 1])) out.push('***');
      else out.push(secretValues.reduce((text, v) => text.split(v).join('***'), a));
    }
    return out;
  }
}
