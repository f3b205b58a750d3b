import { readFileSync } from 'node:fs';
import { v1, PortholeError } from '@porthole/protocol';

interface Entry { name: string; id: number; gid?: number; home?: string }

function parseDb(path: string, idField: number): Entry[] {
  let text = '';
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return [];
  }
  return text.split('\n').filter((l) => l && !l.startsWith('#')).map((line) => {
    const f = line.split(':');
    return { name: f[0], id: Number(f[idField]), gid: idField === 2 ? Number(f[3]) : undefined, home: f[5] };
  });
}

/** Users and groups come from /etc/passwd and /etc/group (Node has no getpwnam). */
export class UserDb {
  constructor(private readonly etc = '/etc') {}

  user(p: v1.Principal.$Properties | null | undefined): { uid: number; gid: number; name: string; home?: string } | undefined {
    if (!p || (p.name == null && p.numeric == null)) return undefined;
    const users = parseDb(`${this.etc}/passwd`, 2);
    if (p.name != null && p.name !== '' && !/^\d+$/.test(p.name)) {
      const u = users.find((e) => e.name === p.name);
      if (!u) throw new PortholeError(v1.ErrorCode.ERROR_CODE_NO_SUCH_USER, `no such user in the guest: ${p.name}`);
      return { uid: u.id, gid: u.gid ?? u.id, name: u.name, home: u.home };
    }
    const uid = Number(p.name ?? p.numeric);
    const u = users.find((e) => e.id === uid);
    return { uid, gid: u?.gid ?? uid, name: u?.name ?? String(uid), home: u?.home };
  }

  group(p: v1.Principal.$Properties | null | undefined): number | undefined {
    if (!p || (p.name == null && p.numeric == null)) return undefined;
    if (p.name != null && p.name !== '' && !/^\d+$/.test(p.name)) {
      const g = parseDb(`${this.etc}/group`, 2).find((e) => e.name === p.name);
      if (!g) throw new PortholeError(v1.ErrorCode.ERROR_CODE_NO_SUCH_GROUP, `no such group in the guest: ${p.name}`);
      return g.id;
    }
    return Number(p.name ?? p.numeric);
  }

  userName(uid: number): string {
    return parseDb(`${this.etc}/passwd`, 2).find((e) => e.id === uid)?.name ?? String(uid);
  }

  groupName(gid: number): string {
    return parseDb(`${this.etc}/group`, 2).find((e) => e.id === gid)?.name ?? String(gid);
  }
}
