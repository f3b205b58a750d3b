// Which libvirt a name refers to: connection URIs, chosen as virsh chooses them, and
// the target form `libvirt:[URI/]DOMAIN`.

/** The connection used when neither the caller nor LIBVIRT_DEFAULT_URI names one. */
export const DEFAULT_LIBVIRT_URI = 'qemu:///system';

/** As virsh chooses: the URI given (--connect), else $LIBVIRT_DEFAULT_URI, else qemu:///system. */
export function libvirtUri(given?: string, env: NodeJS.ProcessEnv = process.env): string {
  return given || env.LIBVIRT_DEFAULT_URI || DEFAULT_LIBVIRT_URI;
}

/**
 * The host a URI's libvirtd runs on, or undefined when it is this one: no host part, or the
 * `+unix` transport (qemu:///system, qemu+unix:///system?socket=…, qemu:///session).
 */
export function remoteHostOf(uri: string): string | undefined {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    return undefined;
  }
  const transport = url.protocol.replace(/:$/, '').split('+')[1];
  return url.hostname === '' || transport === 'unix' ? undefined : url.hostname;
}

export interface LibvirtTarget {
  /** The connection URI named in the target; undefined: the default (libvirtUri()). */
  uri?: string;
  /** Domain name, id or UUID, as virsh takes it. */
  domain: string;
}

const URI_START = /^[a-z][a-z0-9+.-]*:\/\//i;

export class LibvirtTargetError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LibvirtTargetError';
  }
}

/**
 * What follows `libvirt:` in a target: DOMAIN, or URI/DOMAIN (libvirt:qemu:///session/web1). A domain
 * name never contains "/" (libvirt refuses it), so the domain is what follows the last one.
 */
export function parseLibvirtTarget(spec: string): LibvirtTarget {
  if (!URI_START.test(spec)) {
    if (!spec || spec.includes('/')) throw new LibvirtTargetError(`bad libvirt target "${spec}": use libvirt:DOMAIN or libvirt:URI/DOMAIN (e.g. libvirt:qemu:///session/web1)`);
    return { domain: spec };
  }
  const slash = spec.lastIndexOf('/');
  const uri = spec.slice(0, slash);
  const domain = spec.slice(slash + 1);
  let path = '';
  try {
    path = new URL(uri).pathname;
  } catch {
    // reported below
  }
  if (!domain || path === '' || path === '/') {
    throw new LibvirtTargetError(`bad libvirt target "${spec}": after the URI comes /DOMAIN, e.g. libvirt:qemu:///system/web1`);
  }
  return { uri, domain };
}

/** The target string for a domain: libvirt:DOMAIN, or libvirt:URI/DOMAIN when a URI is named. */
export function formatLibvirtTarget(target: LibvirtTarget): string {
  return `libvirt:${target.uri ? `${target.uri}/` : ''}${target.domain}`;
}

/**
 * A target with the URI of --connect (or LIBVIRT_DEFAULT_URI) written into it when it is a libvirt
 * target that names none, so the choice travels with the target (e.g. to a broker daemon). Other
 * targets, and libvirt targets with their own URI, are returned as they are.
 */
export function withLibvirtUri(target: string, uri: string | undefined): string {
  if (!uri || !target.startsWith('libvirt:')) return target;
  const parsed = parseLibvirtTarget(target.slice('libvirt:'.length));
  return parsed.uri ? target : formatLibvirtTarget({ uri, domain: parsed.domain });
}
