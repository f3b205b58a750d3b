import { realpathSync } from 'node:fs';
import { basename as pathBasename } from 'node:path';
import { v1, PortholeError } from '@porthole/protocol';
import { AgentConfig } from './config';
import { isWithin, normalize, showPath } from './paths';

const denied = (message: string, rule: string, path?: Uint8Array) =>
  new PortholeError(v1.ErrorCode.ERROR_CODE_POLICY_DENIED, message, { rule, path });

type Area = 'file_write' | 'file_read';

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
   * The real location of an existing directory (after all symlinks) must be
   * allowed too: a link inside an allowed prefix must not lead out of it.
   */
  checkRealDirectory(area: Area, dir: Buffer, requested: Buffer): void {
    const real = Buffer.from(realpathSync.native(dir, { encoding: 'buffer' }));
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
