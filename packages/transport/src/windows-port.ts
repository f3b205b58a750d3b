// The guest side of a virtio-serial port on Windows: the vioserial driver's device
// \\.\Global\<port name>, opened as a file. Node's fs cannot serve it: it opens files
// for synchronous I/O, and Windows serialises every request on such a handle, so a
// read waiting for the host would hold back every write (the agent's answers).
// The port is opened for overlapped I/O instead (as qemu-ga does), through koffi,
// with one read and one write in flight, each waited for on a koffi worker thread.
import { Channel, ChannelBase, Connector } from './channel';
import { requireBesideExecutable } from './native-modules';
import type * as KoffiModule from 'koffi';

type Koffi = typeof KoffiModule;
type Pointer = unknown;

/** The device Windows gives a named virtio-serial port. */
export function windowsPortPath(name: string): string {
  return `\\\\.\\Global\\${name}`;
}

/** koffi (a maintained FFI package with prebuilt binaries), from beside the executable; the Windows agent ships it there. */
export function loadKoffi(): Koffi {
  return requireBesideExecutable<Koffi>('koffi', 'PORTHOLE_KOFFI_PATH');
}

interface Kernel32 {
  CreateFileW(name: string, access: number, share: number, sa: null, disposition: number, flags: number, template: null): Pointer;
  ReadFile(h: Pointer, buf: Pointer, n: number, read: null, ov: Pointer): number;
  WriteFile(h: Pointer, buf: Pointer, n: number, written: null, ov: Pointer): number;
  GetOverlappedResult: ((h: Pointer, ov: Pointer, n: number[], wait: number) => number) & {
    async(h: Pointer, ov: Pointer, n: number[], wait: number, cb: (err: Error | null, ok: number) => void): void;
  };
  CreateEventW(sa: null, manual: number, initial: number, name: null): Pointer;
  CancelIoEx(h: Pointer, ov: null): number;
  CloseHandle(h: Pointer): number;
  GetLastError(): number;
}

let kernel32: { koffi: Koffi; api: Kernel32 } | undefined;
function win32(): { koffi: Koffi; api: Kernel32 } {
  if (kernel32) return kernel32;
  const koffi = loadKoffi();
  const lib = koffi.load('kernel32.dll');
  const api = {
    CreateFileW: lib.func('void * __stdcall CreateFileW(str16 name, uint32 access, uint32 share, void *sa, uint32 disposition, uint32 flags, void *template)'),
    ReadFile: lib.func('int __stdcall ReadFile(void *h, void *buf, uint32 n, void *read, void *ov)'),
    WriteFile: lib.func('int __stdcall WriteFile(void *h, void *buf, uint32 n, void *written, void *ov)'),
    GetOverlappedResult: lib.func('int __stdcall GetOverlappedResult(void *h, void *ov, _Out_ uint32 *n, int wait)'),
    CreateEventW: lib.func('void * __stdcall CreateEventW(void *sa, int manual, int initial, str16 name)'),
    CancelIoEx: lib.func('int __stdcall CancelIoEx(void *h, void *ov)'),
    CloseHandle: lib.func('int __stdcall CloseHandle(void *h)'),
    GetLastError: lib.func('uint32 __stdcall GetLastError()'),
  } as unknown as Kernel32;
  kernel32 = { koffi, api };
  return kernel32;
}

const GENERIC_READ_WRITE = 0xc0000000;
const OPEN_EXISTING = 3;
const FILE_FLAG_OVERLAPPED = 0x40000000;
const ERROR_IO_PENDING = 997;
const BUFFER_SIZE = 64 * 1024;
/** Bytes queued before write() says wait. */
const HIGH_WATER_MARK = 1024 * 1024;
/** While no host is connected, reads and writes fail at once: they are tried again after these pauses. */
const IDLE_BACKOFF_MS = [10, 50, 100, 200];
/** NTSTATUS values the vioserial driver completes requests with when no host is connected (or its queue is full). */
const HOST_ABSENT = new Set([0xc000009a /* STATUS_INSUFFICIENT_RESOURCES */, 0xc00000d8 /* STATUS_CANT_WAIT */]);

const OPEN_ERRORS: Record<number, string> = {
  2: 'no such device (is the virtio-win vioserial driver installed, and does the VM have a virtio-serial port of that name?)',
  3: 'no such device (is the virtio-win vioserial driver installed, and does the VM have a virtio-serial port of that name?)',
  5: 'access denied (the agent runs as LocalSystem or an administrator)',
  183: 'another program has the port open (the driver allows one)',
  231: 'all pipe instances are busy',
};

/** One overlapped request's memory, which must not move while Windows holds it. */
class Request {
  readonly overlapped: Pointer;
  readonly view: Buffer;
  readonly buffer: Pointer;
  readonly data: Buffer;
  readonly event: Pointer;

  constructor(koffi: Koffi, api: Kernel32) {
    this.overlapped = koffi.alloc('uint8', 32);
    this.view = Buffer.from(koffi.view(this.overlapped, 32));
    this.view.fill(0);
    this.event = api.CreateEventW(null, 1, 0, null);
    this.view.writeBigUInt64LE(BigInt(koffi.address(this.event)), 24);
    this.buffer = koffi.alloc('uint8', BUFFER_SIZE);
    this.data = Buffer.from(koffi.view(this.buffer, BUFFER_SIZE));
  }

  reset(): void {
    this.view.fill(0, 0, 24); // status, count and offset; the event stays
  }

  /** The NTSTATUS the request completed with. */
  get status(): number {
    return this.view.readUInt32LE(0);
  }
}

/**
 * A Windows device or named pipe opened for overlapped I/O, as a byte channel.
 * A vioserial port with no host connected fails reads and writes at once: the
 * channel says 'discontinuity' and tries again after a pause, as the Linux port
 * is reopened. A named pipe whose server went away ends the channel.
 */
export class WindowsPortChannel extends ChannelBase {
  readonly kind = 'bytes' as const;
  readonly description: string;
  private readonly api: Kernel32;
  private readonly reading: Request;
  private readonly writing: Request;
  private queue: Buffer[] = [];
  private queued = 0;
  private writeBusy = false;
  private readBusy = false;
  private idle = 0;
  private writersWaiting = false;
  private timers = new Set<NodeJS.Timeout>();

  private constructor(private handle: Pointer, readonly path: string, koffi: Koffi, api: Kernel32) {
    super();
    this.api = api;
    this.description = `windows-port:${path}`;
    this.reading = new Request(koffi, api);
    this.writing = new Request(koffi, api);
  }

  static open(path: string): WindowsPortChannel {
    const { koffi, api } = win32();
    const handle = api.CreateFileW(path, GENERIC_READ_WRITE, 0, null, OPEN_EXISTING, FILE_FLAG_OVERLAPPED, null);
    if (BigInt(koffi.address(handle)) === 0xffffffffffffffffn) {
      const code = api.GetLastError();
      throw Object.assign(new Error(`cannot open ${path}: ${OPEN_ERRORS[code] ?? `Windows error ${code}`}`), { code: `WIN32_${code}` });
    }
    const channel = new WindowsPortChannel(handle, path, koffi, api);
    channel.read();
    return channel;
  }

  private later(fn: () => void): void {
    const delay = IDLE_BACKOFF_MS[Math.min(this.idle++, IDLE_BACKOFF_MS.length - 1)];
    const timer = setTimeout(() => { this.timers.delete(timer); fn(); }, delay);
    this.timers.add(timer);
  }

  /** Start one overlapped request and call back with its byte count, or its NTSTATUS on failure. */
  private submit(req: Request, start: () => number, done: (bytes: number, failed?: number) => void): void {
    req.reset();
    if (!start()) {
      const code = this.api.GetLastError();
      if (code !== ERROR_IO_PENDING) return done(0, req.status || 0xc0000000 | code);
    }
    const n = [0];
    this.api.GetOverlappedResult.async(this.handle, req.overlapped, n, 1, (err, ok) => {
      if (err) return done(0, 0xc0000001);
      done(ok ? n[0] : 0, ok ? undefined : req.status);
    });
  }

  private read(): void {
    if (this.closed || this.readBusy) return;
    this.readBusy = true;
    this.submit(this.reading, () => this.api.ReadFile(this.handle, this.reading.buffer, BUFFER_SIZE, null, this.reading.overlapped), (bytes, failed) => {
      this.readBusy = false;
      if (this.closed) return this.release();
      if (failed !== undefined && !HOST_ABSENT.has(failed)) {
        return this.fail(`read failed (NTSTATUS 0x${failed.toString(16)})`);
      }
      if (failed !== undefined || bytes === 0) {
        if (this.idle === 0) this.emit('discontinuity');
        return this.later(() => this.read());
      }
      this.idle = 0;
      this.emit('data', Buffer.from(this.reading.data.subarray(0, bytes)));
      this.read();
    });
  }

  private flush(): void {
    if (this.closed || this.writeBusy || !this.queue.length) return;
    this.writeBusy = true;
    const head = this.queue[0];
    const size = Math.min(head.length, BUFFER_SIZE);
    head.copy(this.writing.data, 0, 0, size);
    this.submit(this.writing, () => this.api.WriteFile(this.handle, this.writing.buffer, size, null, this.writing.overlapped), (bytes, failed) => {
      this.writeBusy = false;
      if (this.closed) return this.release();
      if (failed !== undefined && !HOST_ABSENT.has(failed)) return this.fail(`write failed (NTSTATUS 0x${failed.toString(16)})`);
      if (failed !== undefined || bytes === 0) return this.later(() => this.flush());
      this.queued -= bytes;
      if (bytes === head.length) this.queue.shift();
      else this.queue[0] = head.subarray(bytes);
      if (this.writersWaiting && this.queued < HIGH_WATER_MARK / 2) {
        this.writersWaiting = false;
        this.emit('drain');
      }
      this.flush();
    });
  }

  write(data: Buffer): boolean {
    if (this.closed) return false;
    this.queue.push(data);
    this.queued += data.length;
    this.flush();
    if (this.queued < HIGH_WATER_MARK) return true;
    this.writersWaiting = true;
    return false;
  }

  private fail(message: string): void {
    this.stop(new Error(`${this.description}: ${message}`));
  }

  private stop(error?: Error): void {
    if (this.closed) return;
    for (const timer of this.timers) clearTimeout(timer);
    this.markClosed(error);
    this.api.CancelIoEx(this.handle, null);
    this.release();
  }

  /** The handle goes once no request holds it (a cancelled request still completes). */
  private release(): void {
    if (this.readBusy || this.writeBusy || !this.handle) return;
    this.api.CloseHandle(this.handle);
    this.api.CloseHandle(this.reading.event);
    this.api.CloseHandle(this.writing.event);
    this.handle = null;
  }

  close(): void {
    this.stop();
  }
}

/** Opens the Windows device (or named pipe) of the agent's port. */
export class WindowsPortConnector implements Connector {
  readonly description: string;

  constructor(private readonly path: string) {
    this.description = `windows-port:${path}`;
  }

  async connect(): Promise<Channel> {
    return WindowsPortChannel.open(this.path);
  }
}
