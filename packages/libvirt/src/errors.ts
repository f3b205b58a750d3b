/** What went wrong reaching a domain through libvirt. */
export type LibvirtErrorKind =
  /** virsh is not installed. */
  | 'no-virsh'
  /** Nothing answers at the URI: libvirtd is not running, or is restarting. */
  | 'no-libvirtd'
  /** The URI names another host: the domain's channel socket is there, not here. */
  | 'remote-uri'
  /** No domain with that name, id or UUID. */
  | 'no-domain'
  /** The domain exists and is not running. */
  | 'not-running'
  /** The domain has no usable channel of that name. */
  | 'no-channel'
  /** The domain runs and has the channel, but the guest has not opened its end. */
  | 'guest-not-connected'
  /** Anything else virsh reported (its message is kept). */
  | 'failed';

/** Kinds that waiting cannot cure: a connector gives up at once on them. */
const PERMANENT: ReadonlySet<LibvirtErrorKind> = new Set(['no-virsh', 'remote-uri', 'no-domain', 'not-running', 'no-channel', 'failed']);

export class LibvirtError extends Error {
  constructor(readonly kind: LibvirtErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'LibvirtError';
  }

  /** True when trying again cannot help (read by the transport's connectWithRetry). */
  get permanent(): boolean {
    return PERMANENT.has(this.kind);
  }
}
