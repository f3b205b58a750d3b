import { XsPermission } from '../wire';

/** A node as xenstored keeps it. Nodes are replaced, never changed in place, so a snapshot stays valid. */
export interface XsNode {
  readonly value: Buffer;
  readonly perms: readonly XsPermission[];
  readonly children: readonly string[];
  /** Bumped on every change of the node (value, perms or child list); DIRECTORY_PART reports it. */
  readonly gen: number;
}

/** Where a request reads and writes: the store itself, or a transaction's private overlay of it. */
export interface NodeView {
  get(path: string): XsNode | undefined;
  put(path: string, node: Omit<XsNode, 'gen'>): void;
  del(path: string): void;
  /** Nodes owned by a domain (its entry quota). */
  entries(domid: number): number;
}

export function parentOf(path: string): string {
  const i = path.lastIndexOf('/');
  return i <= 0 ? '/' : path.slice(0, i);
}

export function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

export function joinPath(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

/** The committed tree. */
export class Store implements NodeView {
  private readonly nodes = new Map<string, XsNode>();
  private readonly owned = new Map<number, number>();
  private generation = 0;

  constructor() {
    const perms: XsPermission[] = [{ domid: 0, perm: 'n' }];
    // The nodes a fresh xenstored starts with.
    this.put('/', { value: Buffer.alloc(0), perms, children: ['tool'] });
    this.put('/tool', { value: Buffer.alloc(0), perms, children: ['xenstored'] });
    this.put('/tool/xenstored', { value: Buffer.alloc(0), perms, children: [] });
    this.put('@introduceDomain', { value: Buffer.alloc(0), perms, children: [] });
    this.put('@releaseDomain', { value: Buffer.alloc(0), perms, children: [] });
  }

  get(path: string): XsNode | undefined {
    return this.nodes.get(path);
  }

  put(path: string, node: Omit<XsNode, 'gen'>): void {
    const old = this.nodes.get(path);
    if (old) this.count(old.perms[0].domid, -1);
    this.count(node.perms[0].domid, 1);
    this.nodes.set(path, { ...node, gen: ++this.generation });
  }

  del(path: string): void {
    const old = this.nodes.get(path);
    if (!old) return;
    this.count(old.perms[0].domid, -1);
    this.nodes.delete(path);
  }

  entries(domid: number): number {
    return this.owned.get(domid) ?? 0;
  }

  private count(domid: number, delta: number): void {
    const n = (this.owned.get(domid) ?? 0) + delta;
    if (n) this.owned.set(domid, n);
    else this.owned.delete(domid);
  }
}

/**
 * A transaction: changes stay in an overlay; every node it touches is
 * remembered with the generation it had, and the commit fails (EAGAIN) if
 * any of them changed meanwhile — xenstored's conflict rule.
 */
export class TransactionView implements NodeView {
  private readonly overlay = new Map<string, XsNode | null>();
  private readonly seen = new Map<string, number>();
  private readonly ownedDelta = new Map<number, number>();

  constructor(private readonly store: Store, readonly id: number) {}

  get(path: string): XsNode | undefined {
    const o = this.overlay.get(path);
    if (o !== undefined) return o ?? undefined;
    const node = this.store.get(path);
    if (!this.seen.has(path)) this.seen.set(path, node?.gen ?? -1);
    return node;
  }

  put(path: string, node: Omit<XsNode, 'gen'>): void {
    const old = this.get(path);
    if (old) this.count(old.perms[0].domid, -1);
    this.count(node.perms[0].domid, 1);
    this.overlay.set(path, { ...node, gen: 0 });
  }

  del(path: string): void {
    const old = this.get(path);
    if (old) this.count(old.perms[0].domid, -1);
    this.overlay.set(path, null);
  }

  entries(domid: number): number {
    return this.store.entries(domid) + (this.ownedDelta.get(domid) ?? 0);
  }

  /** Apply the overlay; false on a conflict (nothing applied). */
  commit(): boolean {
    for (const [path, gen] of this.seen) if ((this.store.get(path)?.gen ?? -1) !== gen) return false;
    for (const [path, node] of this.overlay) {
      if (node) this.store.put(path, node);
      else this.store.del(path);
    }
    return true;
  }

  private count(domid: number, delta: number): void {
    this.ownedDelta.set(domid, (this.ownedDelta.get(domid) ?? 0) + delta);
  }
}
