// Stopping a command on Windows means stopping what it started too (cmd /c starts the
// real program as its child). There are no process groups: the tree is read from a
// process snapshot (Toolhelp) and every member is terminated, as `taskkill /T /F` does;
// taskkill itself is the fallback when koffi is missing (Wine's taskkill has no /T).
import { loadKoffi } from '@porthole/transport';
import { childProcess } from '../builtins';

type Pointer = unknown;
interface Toolhelp {
  CreateToolhelp32Snapshot(flags: number, pid: number): Pointer;
  Process32FirstW(h: Pointer, entry: { dwSize: number; th32ProcessID?: number; th32ParentProcessID?: number }): number;
  Process32NextW(h: Pointer, entry: { dwSize: number; th32ProcessID?: number; th32ParentProcessID?: number }): number;
  OpenProcess(access: number, inherit: number, pid: number): Pointer;
  TerminateProcess(h: Pointer, code: number): number;
  CloseHandle(h: Pointer): number;
  entrySize: number;
}

let toolhelp: Toolhelp | undefined;
function api(): Toolhelp {
  if (toolhelp) return toolhelp;
  const koffi = loadKoffi();
  const k32 = koffi.load('kernel32.dll');
  const entry = koffi.struct('PORTHOLE_PROCESSENTRY32W', {
    dwSize: 'uint32', cntUsage: 'uint32', th32ProcessID: 'uint32', th32DefaultHeapID: 'uintptr', th32ModuleID: 'uint32', cntThreads: 'uint32',
    th32ParentProcessID: 'uint32', pcPriClassBase: 'int32', dwFlags: 'uint32', szExeFile: koffi.array('char16', 260, 'String'),
  });
  toolhelp = {
    CreateToolhelp32Snapshot: k32.func('void * __stdcall CreateToolhelp32Snapshot(uint32 flags, uint32 pid)'),
    Process32FirstW: k32.func('int __stdcall Process32FirstW(void *h, _Inout_ PORTHOLE_PROCESSENTRY32W *e)'),
    Process32NextW: k32.func('int __stdcall Process32NextW(void *h, _Inout_ PORTHOLE_PROCESSENTRY32W *e)'),
    OpenProcess: k32.func('void * __stdcall OpenProcess(uint32 access, int inherit, uint32 pid)'),
    TerminateProcess: k32.func('int __stdcall TerminateProcess(void *h, uint32 code)'),
    CloseHandle: k32.func('int __stdcall CloseHandle(void *h)'),
    entrySize: koffi.sizeof(entry),
  } as unknown as Toolhelp;
  return toolhelp;
}

const TH32CS_SNAPPROCESS = 2;
const PROCESS_TERMINATE = 1;
/** Exit code of a terminated command (as taskkill /F gives). */
const TERMINATED = 1;

/** pid and its descendants, parents first, from one snapshot. */
function tree(t: Toolhelp, root: number): number[] {
  const children = new Map<number, number[]>();
  const snapshot = t.CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0);
  try {
    const entry = { dwSize: t.entrySize } as { dwSize: number; th32ProcessID: number; th32ParentProcessID: number };
    for (let ok = t.Process32FirstW(snapshot, entry); ok; ok = t.Process32NextW(snapshot, entry)) {
      const list = children.get(entry.th32ParentProcessID) ?? [];
      list.push(entry.th32ProcessID);
      children.set(entry.th32ParentProcessID, list);
    }
  } finally {
    t.CloseHandle(snapshot);
  }
  const out: number[] = [];
  const seen = new Set<number>();
  for (let queue = [root]; queue.length;) {
    const pid = queue.shift()!;
    if (seen.has(pid)) continue; // a reused pid can make the parent links loop
    seen.add(pid);
    out.push(pid);
    queue = queue.concat(children.get(pid) ?? []);
  }
  return out;
}

/** Terminate pid and everything it started; the root first, so it starts nothing more meanwhile. */
export function killProcessTree(pid: number): void {
  let t: Toolhelp;
  try {
    t = api();
  } catch {
    childProcess().spawnSync('taskkill', ['/PID', String(pid), '/T', '/F'], { stdio: 'ignore', windowsHide: true });
    return;
  }
  for (const member of tree(t, pid)) {
    const h = t.OpenProcess(PROCESS_TERMINATE, 0, member);
    if (!h) continue; // already gone
    t.TerminateProcess(h, TERMINATED);
    t.CloseHandle(h);
  }
}
