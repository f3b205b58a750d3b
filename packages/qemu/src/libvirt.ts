// The host end of a libvirt domain's virtio-serial channel: libvirt gives the
// socket path in the domain XML (`virsh dumpxml`), under
// <channel type="unix"><source mode="bind" path="..."/><target type="virtio" name="..."/></channel>.
import { execFileSync } from 'node:child_process';
import { DOMParser, Element } from '@xmldom/xmldom';

export interface VirshOptions {
  /** The virsh executable (default `virsh` from PATH). */
  virsh?: string;
  /** A libvirt connection URI (`virsh -c URI`), e.g. qemu:///system. Default: virsh's own default. */
  connectUri?: string;
  /** Limit for virsh (default 15 s; a stuck libvirtd must not hang the caller). */
  timeoutMs?: number;
}

const children = (parent: Element, name: string): Element[] =>
  Array.from(parent.childNodes).filter((n): n is Element => n.nodeType === n.ELEMENT_NODE && (n as Element).tagName === name);

/** The unix socket path of the virtio channel named portName in a domain's XML. */
export function findLibvirtChannelSocket(domainXml: string, portName: string): string {
  let doc;
  try {
    doc = new DOMParser({
      onError: (level, message) => {
        // xmldom recovers from "error"s silently; a half-read domain would give a wrong answer.
        if (level !== 'warning') throw new Error(message);
      },
    }).parseFromString(domainXml, 'text/xml');
  } catch (err) {
    throw new Error(`the domain XML is not well-formed: ${(err as Error).message.split('\n')[0]}`);
  }
  const domain = doc.documentElement;
  if (!domain || domain.tagName !== 'domain') throw new Error(`the XML is not a libvirt domain (root element ${domain?.tagName ?? 'missing'})`);
  const domainName = children(domain, 'name')[0]?.textContent?.trim() ?? '(unnamed)';
  const seen: string[] = [];
  for (const devices of children(domain, 'devices')) {
    for (const channel of children(devices, 'channel')) {
      const target = children(channel, 'target')[0];
      const name = target?.getAttribute('name') ?? '';
      const type = channel.getAttribute('type') ?? '';
      seen.push(`${name || '(no name)'} (${type || 'no type'})`);
      if (name !== portName || target?.getAttribute('type') !== 'virtio') continue;
      if (type !== 'unix') {
        throw new Error(`domain ${domainName}: channel ${portName} is of type ${type || '(none)'}, not unix: the host side must be a unix socket`);
      }
      const path = children(channel, 'source')[0]?.getAttribute('path');
      if (!path) throw new Error(`domain ${domainName}: channel ${portName} has no <source path=...> (is the domain running? libvirt fills in an automatic path at start)`);
      return path;
    }
  }
  throw new Error(
    `domain ${domainName} has no virtio channel named ${portName} ` +
      `(channels: ${seen.length ? seen.join(', ') : 'none'}; add <channel type="unix"><target type="virtio" name="${portName}"/></channel>)`,
  );
}

/** `virsh dumpxml DOMAIN`, then the socket path of its channel named portName. */
export function libvirtChannelSocket(domain: string, portName: string, options: VirshOptions = {}): string {
  const virsh = options.virsh ?? 'virsh';
  const args = [...(options.connectUri ? ['-c', options.connectUri] : []), 'dumpxml', domain];
  let xml: string;
  try {
    xml = execFileSync(virsh, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: options.timeoutMs ?? 15_000, maxBuffer: 16 << 20 });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string; signal?: string };
    if (e.code === 'ENOENT') throw new Error(`libvirt domains need virsh, which was not found (${virsh}; Debian package libvirt-clients)`);
    if (e.signal) throw new Error(`virsh dumpxml ${domain} did not finish within ${options.timeoutMs ?? 15_000} ms`);
    const detail = (e.stderr ?? '').trim() || e.message;
    if (/failed to get domain|Domain not found/i.test(detail)) throw new Error(`libvirt has no domain ${domain}: ${detail}`);
    throw new Error(`virsh dumpxml ${domain} failed: ${detail}`);
  }
  return findLibvirtChannelSocket(xml, portName);
}
