// The agent as a Windows service. Node cannot answer the service control manager
// (SCM) by itself, so the agent does it through koffi: StartServiceCtrlDispatcherW
// waits on a koffi worker thread, and the SCM's calls (ServiceMain, the control
// handler) come back to the event loop as koffi callbacks. No wrapper process: the
// service is the agent. At start it sets its own failure actions (restart after
// 1 s, 5 s, 30 s), which the MSI tool (wixl) cannot write.
import { loadKoffi } from '@porthole/transport';

export const SERVICE_NAME = 'PortholeAgent';

type Pointer = unknown;
interface Status {
  dwServiceType: number; dwCurrentState: number; dwControlsAccepted: number; dwWin32ExitCode: number;
  dwServiceSpecificExitCode: number; dwCheckPoint: number; dwWaitHint: number;
}

const OWN_PROCESS = 0x10;
const [STOPPED, START_PENDING, STOP_PENDING, RUNNING] = [1, 2, 3, 4];
const CONTROL = { STOP: 1, INTERROGATE: 4, SHUTDOWN: 5, PARAMCHANGE: 6 };
const ACCEPT_STOP_SHUTDOWN_PARAMCHANGE = 0x1 | 0x4 | 0x8;
const ERROR_CALL_NOT_IMPLEMENTED = 120;

export interface ServiceHooks {
  /** Stop serving; resolves once stopped. */
  stop(): Promise<void>;
  /** `sc control PortholeAgent paramchange`: re-read the config. */
  reload(): void;
}

/**
 * Serve as the service `name`: `start` runs when the SCM starts it, the hooks
 * when the SCM asks. Resolves when the service has stopped (the dispatcher returned);
 * rejects when this process was not started by the SCM.
 */
export function runAsService(name: string, start: () => ServiceHooks, log: (message: string, meta?: object) => void): Promise<void> {
  const koffi = loadKoffi();
  const advapi = koffi.load('advapi32.dll');
  const StatusT = koffi.struct('PORTHOLE_SERVICE_STATUS', {
    dwServiceType: 'uint32', dwCurrentState: 'uint32', dwControlsAccepted: 'uint32', dwWin32ExitCode: 'uint32',
    dwServiceSpecificExitCode: 'uint32', dwCheckPoint: 'uint32', dwWaitHint: 'uint32',
  });
  const ServiceMain = koffi.proto('void __stdcall PortholeServiceMain(uint32 argc, void *argv)');
  const HandlerEx = koffi.proto('uint32 __stdcall PortholeHandlerEx(uint32 control, uint32 type, void *data, void *context)');
  koffi.struct('PORTHOLE_SERVICE_TABLE_ENTRYW', { name: 'str16', proc: koffi.pointer(ServiceMain) });
  const Action = koffi.struct('PORTHOLE_SC_ACTION', { type: 'int32', delay: 'uint32' });
  koffi.struct('PORTHOLE_SERVICE_FAILURE_ACTIONSW', {
    resetPeriod: 'uint32', rebootMessage: 'str16', command: 'str16', count: 'uint32', actions: koffi.pointer(Action),
  });
  const dispatcher = advapi.func('int __stdcall StartServiceCtrlDispatcherW(PORTHOLE_SERVICE_TABLE_ENTRYW *table)');
  const register = advapi.func('void * __stdcall RegisterServiceCtrlHandlerExW(str16 name, PortholeHandlerEx *handler, void *context)');
  const setStatus = advapi.func('int __stdcall SetServiceStatus(void *handle, PORTHOLE_SERVICE_STATUS *status)');
  const openManager = advapi.func('void * __stdcall OpenSCManagerW(str16 machine, str16 database, uint32 access)');
  const openService = advapi.func('void * __stdcall OpenServiceW(void *manager, str16 name, uint32 access)');
  const configure = advapi.func('int __stdcall ChangeServiceConfig2W(void *service, uint32 level, PORTHOLE_SERVICE_FAILURE_ACTIONSW *info)');
  const closeHandle = advapi.func('int __stdcall CloseServiceHandle(void *handle)');
  void StatusT;

  let handle: Pointer;
  let hooks: ServiceHooks | undefined;
  let checkPoint = 0;
  const report = (state: number, waitHint = 0) => {
    const status: Status = {
      dwServiceType: OWN_PROCESS, dwCurrentState: state, dwControlsAccepted: state === RUNNING ? ACCEPT_STOP_SHUTDOWN_PARAMCHANGE : 0,
      dwWin32ExitCode: 0, dwServiceSpecificExitCode: 0, dwCheckPoint: state === START_PENDING || state === STOP_PENDING ? ++checkPoint : 0, dwWaitHint: waitHint,
    };
    setStatus(handle, status);
  };

  const restartOnFailure = () => {
    const manager = openManager(null, null, 0x1 /* SC_MANAGER_CONNECT */);
    const service = manager && openService(manager, name, 0x2 | 0x10 /* SERVICE_CHANGE_CONFIG | SERVICE_START */);
    const actions = [{ type: 1, delay: 1000 }, { type: 1, delay: 5000 }, { type: 1, delay: 30000 }]; // SC_ACTION_RESTART
    const ok = service && configure(service, 2 /* SERVICE_CONFIG_FAILURE_ACTIONS */, { resetPeriod: 86400, rebootMessage: null, command: null, count: actions.length, actions });
    if (!ok) log('could not set the service to restart on failure');
    if (service) closeHandle(service);
    if (manager) closeHandle(manager);
  };

  const handler = koffi.register((control: number) => {
    if (control === CONTROL.STOP || control === CONTROL.SHUTDOWN) {
      report(STOP_PENDING, 15000);
      void (hooks?.stop() ?? Promise.resolve()).finally(() => report(STOPPED));
      return 0;
    }
    if (control === CONTROL.PARAMCHANGE) {
      hooks?.reload();
      return 0;
    }
    return control === CONTROL.INTERROGATE ? 0 : ERROR_CALL_NOT_IMPLEMENTED;
  }, koffi.pointer(HandlerEx));

  const main = koffi.register(() => {
    handle = register(name, handler, null);
    report(START_PENDING, 10000);
    restartOnFailure();
    try {
      hooks = start();
      report(RUNNING);
      log('running as a Windows service', { service: name });
    } catch (err) {
      log('service start failed', { error: (err as Error).message });
      report(STOPPED);
    }
  }, koffi.pointer(ServiceMain));

  return new Promise((resolve, reject) => {
    dispatcher.async([{ name, proc: main }, { name: null, proc: null }], (err: Error | null, ok: number) => {
      koffi.unregister(main);
      koffi.unregister(handler);
      if (err || !ok) reject(new Error('--service: this process was not started by the service control manager (start the service with sc start or net start)'));
      else resolve();
    });
  });
}
