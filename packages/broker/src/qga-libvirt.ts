// qemu-guest-agent of a libvirt domain. libvirtd holds the domain's qga channel itself (a QEMU chardev
// takes one client at a time), so commands go through it: `virsh qemu-agent-command`, one run each.
import { LibvirtError, Virsh } from '@porthole/libvirt';
import { QgaCommands, QgaError } from '@porthole/qga';

/** How libvirt words qemu-ga's own error answer. */
const AGENT_ERROR = /unable to execute QEMU agent command '[^']*': (.*)$/;

export class LibvirtQga extends QgaCommands {
  /** A command is one virsh argument, at most 128 KiB (Linux's MAX_ARG_STRLEN): 64 KiB of data is 88 KiB of base64. */
  readonly maxChunk = 64 * 1024;

  constructor(private readonly virsh: Virsh, readonly domain: string) {
    super();
  }

  async command<T = unknown>(execute: string, args?: Record<string, unknown>, timeoutMs = 60000): Promise<T> {
    const request = JSON.stringify(args ? { execute, arguments: args } : { execute });
    let out: string;
    try {
      out = await this.virsh.run(['qemu-agent-command', '--domain', this.domain, '--timeout', String(Math.max(1, Math.ceil(timeoutMs / 1000))), request], { domain: this.domain });
    } catch (err) {
      const m = err instanceof LibvirtError ? AGENT_ERROR.exec(err.message) : null;
      if (m) throw new QgaError(execute, /has been disabled/i.test(m[1]) ? 'GenericError' : /not found|unknown command/i.test(m[1]) ? 'CommandNotFound' : 'GenericError', m[1]);
      throw err;
    }
    return (JSON.parse(out) as { return: T }).return;
  }

  close(): void {
    // Nothing held: each command is its own virsh run.
  }
}
