// What a written file gets on Windows beyond its content. An owner is set as the file's
// owner SID (icacls /setowner, before the file replaces the target; icacls resolves the
// account name and needs the restore privilege LocalSystem has). POSIX groups and modes
// have no faithful mapping onto Windows ACLs, so they are refused, never silently dropped:
// the file inherits its folder's ACL, and a specific ACL is set with `icacls` through exec.
import { v1, PortholeError } from '@porthole/protocol';
import { UserDb } from '../users';
import { showPath } from '../paths';
import { execFileAsync } from '../builtins';

const E = v1.ErrorCode;
const given = (p: v1.Principal.$Properties | null | undefined) => !!p && (!!p.name || p.numeric != null);
const refuse = (what: string) =>
  new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, `${what} has no meaning for a Windows file (files inherit their folder's ACL; set one with icacls through exec); leave it unset`);

/** Refuse, before anything is written, what a Windows file cannot be given. */
export function checkWindowsWrite(req: v1.FileWriteRequest.$Properties): void {
  if (given(req.group) || given(req.parentGroup)) throw refuse('a POSIX group');
  if (req.hasMode || req.hasParentMode) throw refuse('a POSIX mode');
  if (given(req.parentOwner)) throw refuse('an owner for created folders');
}

/** Accounts on Windows: a name (DOMAIN\user, user, or a SID string), never a numeric id. */
export class WindowsAccounts extends UserDb {
  override user(p: v1.Principal.$Properties | null | undefined): { uid: number; gid: number; name: string; home?: string } | undefined {
    if (!given(p)) return undefined;
    if (!p!.name || /^\d+$/.test(p!.name)) throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, `Windows accounts have no numeric ids: name the account (user, DOMAIN\\user or a SID), not ${p!.name || p!.numeric}`);
    // uid/gid 0: Windows has none; the owner is applied by name (setWindowsOwner).
    return { uid: 0, gid: 0, name: p!.name };
  }

  override group(p: v1.Principal.$Properties | null | undefined): number | undefined {
    if (given(p)) throw refuse('a POSIX group');
    return undefined;
  }

  override userName(): string {
    return '';
  }

  override groupName(): string {
    return '';
  }
}

/** Make `owner` the owner of the (temporary) file; an unknown account is NO_SUCH_USER. */
export async function setWindowsOwner(file: Buffer, owner: v1.Principal.$Properties | null | undefined): Promise<void> {
  if (!given(owner)) return;
  const name = owner!.name!;
  const account = /^S-\d-/i.test(name) ? `*${name}` : name;
  try {
    await execFileAsync('icacls', [file.toString('utf8'), '/setowner', account, '/Q'], { windowsHide: true });
  } catch (err) {
    const out = `${(err as { stdout?: string }).stdout ?? ''}${(err as { stderr?: string }).stderr ?? ''}`.trim();
    if (/mapping between account names/i.test(out)) throw new PortholeError(E.ERROR_CODE_NO_SUCH_USER, `no such account in the guest: ${name}`);
    throw new PortholeError(E.ERROR_CODE_PERMISSION_DENIED, `cannot make ${name} the owner of ${showPath(file)}: ${out || (err as Error).message}`);
  }
}
