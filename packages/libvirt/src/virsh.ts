import { execFile } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { LibvirtError } from './errors';
import { libvirtUri } from './uri';

export interface VirshOptions {
  /** Connection URI; default libvirtUri() (LIBVIRT_DEFAULT_URI, else qemu:///system). */
  uri?: string;
  /** The virsh executable (default: virsh on PATH). */
  binary?: string;
  /** Kill a virsh call that takes longer (default 60 s). */
  timeoutMs?: number;
  /** Try a call again while libvirtd is down (restarting) for up to this long (default 0: fail at once). */
  waitForLibvirtdMs?: number;
}

/** The lines virsh printed after "error: ", joined: its own words for what failed. */
function virshMessage(stderr: string): string {
  const lines = stderr.split('\n').map((l) => l.trim()).filter(Boolean).map((l) => l.replace(/^error:\s*/, ''));
  return lines.join('; ') || 'no message';
}

/**
 * Runs virsh against one libvirt connection. virsh, not libvirt's RPC protocol: it is what operators
 * have, it is stable across libvirt versions, and its messages are the ones they know. Every failure
 * is a LibvirtError whose message keeps virsh's own words.
 */
export class Virsh {
  readonly uri: string;
  private readonly binary: string;
  private readonly timeoutMs: number;
  private readonly waitForLibvirtdMs: number;

  constructor(options: VirshOptions = {}) {
    this.uri = libvirtUri(options.uri);
    this.binary = options.binary ?? 'virsh';
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.waitForLibvirtdMs = options.waitForLibvirtdMs ?? 0;
  }

  /** One virsh command; its standard output. `domain` names the domain in errors. */
  async run(args: readonly string[], context: { domain?: string } = {}): Promise<string> {
    const deadline = Date.now() + this.waitForLibvirtdMs;
    for (;;) {
      try {
        return await this.runOnce(args, context);
      } catch (err) {
        if (!(err instanceof LibvirtError && err.kind === 'no-libvirtd') || Date.now() >= deadline) throw err;
        await sleep(250);
      }
    }
  }

  private runOnce(args: readonly string[], context: { domain?: string }): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(this.binary, ['-c', this.uri, ...args], {
        encoding: 'utf8', maxBuffer: 64 << 20, timeout: this.timeoutMs,
        // virsh translates its messages; these are matched below.
        env: { ...process.env, LC_ALL: 'C' },
      }, (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        const e = err as NodeJS.ErrnoException & { killed?: boolean };
        if (e.code === 'ENOENT') return reject(new LibvirtError('no-virsh', `libvirt targets need ${this.binary} (Debian package libvirt-clients)`, { cause: err }));
        if (e.killed) return reject(new LibvirtError('failed', `virsh ${args[0]} did not finish within ${this.timeoutMs} ms (${this.uri})`, { cause: err }));
        reject(this.classify(args, stderr, context.domain, err));
      });
    });
  }

  private classify(args: readonly string[], stderr: string, domain: string | undefined, cause: Error): LibvirtError {
    const message = virshMessage(stderr);
    if (/failed to connect to the hypervisor/i.test(stderr)) {
      // A missing or refusing socket is libvirtd being down or restarting; anything else (permissions,
      // authentication, a bad URI) will not change by waiting.
      const down = /No such file or directory|Connection refused/i.test(stderr);
      return new LibvirtError(down ? 'no-libvirtd' : 'failed', `cannot reach libvirt at ${this.uri}: ${message}${down ? ' (is libvirtd running?)' : ''}`, { cause });
    }
    if (domain !== undefined && /failed to get domain|Domain not found/i.test(stderr)) {
      return new LibvirtError('no-domain', `there is no libvirt domain "${domain}" at ${this.uri}`, { cause });
    }
    return new LibvirtError('failed', `virsh ${args[0]}${domain !== undefined ? ` ${domain}` : ''} failed (${this.uri}): ${message}`, { cause });
  }

  /** The domain's XML: the live one while it runs (channel socket paths, aliases), else its definition. */
  dumpXml(domain: string, options: { inactive?: boolean } = {}): Promise<string> {
    return this.run(['dumpxml', ...(options.inactive ? ['--inactive'] : []), '--', domain], { domain });
  }

  /** "running", "paused", "shut off", … as virsh domstate prints it. */
  async domState(domain: string): Promise<string> {
    return (await this.run(['domstate', '--', domain], { domain })).trim();
  }
}
