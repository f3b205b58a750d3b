import { readFileSync } from 'node:fs';
import { v1, PortholeError } from '@porthole/protocol';

interface UserEntry { name: string; uid: number; gid: number; home?: string }
interface GroupEntry { name: string; gid: number; members: string[] }

/** The colon-separated records of an /etc database (an unreadable file has none). */
function records(path: string): string[][] {
  let text = '';
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return [];
  }
  return text.split('\n').filter((l) => l && !l.startsWith('#')).map((line) => line.split(':'));
}

/** Users and groups come from /etc/passwd and /etc/group (Node has no getpwnam). */
export class UserDb {
  constructor(private readonly etc = '/etc') {}

  private users(): UserEntry[] {
    return records(`${this.etc}/passwd`).map((f) => ({ name: f[0], uid: Number(f[2]), gid: Number(f[3]), home: f[5] }));
  }

  private groups(): GroupEntry[] {
    return records(`${this.etc}/group`).map((f) => ({ name: f[0], gid: Number(f[2]), members: f[3] ? f[3].split(',') : [] }));
  }

  user(p: v1.Principal.$Properties | null | undefined): { uid: number; gid: number; name: string; home?: string } | undefined {
    if (!p || (p.name == null && p.numeric == null)) return undefined;
    const users = this.users();
    if (p.name != null && p.name !== '' && !/^\d+$/.test(p.name)) {
      const u = users.find((e) => e.name === p.name);
      if (!u) throw new PortholeError(v1.ErrorCode.ERROR_CODE_NO_SUCH_USER, `no such user in the guest: ${p.name}`);
      return { uid: u.uid, gid: u.gid, name: u.name, home: u.home };
    }
    const uid = Number(p.name ?? p.numeric);
    const u = users.find((e) => e.uid === uid);
    return { uid, gid: u?.gid ?? uid, name: u?.name ?? String(uid), home: u?.home };
  }

  group(p: v1.Principal.$Properties | null | undefined): number | undefined {
    if (!p || (p.name == null && p.numeric == null)) return undefined;
    if (p.name != null && p.name !== '' && !/^\d+$/.test(p.name)) {
      const g = this.groups().find((e) => e.name === p.name);
      if (!g) throw new PortholeError(v1.ErrorCode.ERROR_CODE_NO_SUCH_GROUP, `no such group in the guest: ${p.name}`);
      return g.gid;
    }
    return Number(p.name ?? p.numeric);
  }

  /** The user's primary group and the groups that list it as a member. */
  groupsOf(user: { name: string; gid: number }): number[] {
    return [user.gid, ...this.groups().filter((g) => g.members.includes(user.name)).map((g) => g.gid)];
  }

  userName(uid: number): string {
    return this.users().find((e) => e.uid === uid)?.name ?? String(uid);
  }

  groupName(gid: number): string {
    return this.groups().find((e) => e.gid === gid)?.name ?? String(gid);
  }
}
