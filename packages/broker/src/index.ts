export { connect, PortholeClient, ExecTask, Task, describeError, UnreachableError, ConnectOptions, InstallOptions, InstallSource, InstallResult, ReadResult, ExecOptions, ExecCommand, ExitStatus } from './client';
export { connectorForTarget, PORTHOLE_PORT_NAME } from './targets';
export { Route, DEFAULT_BROKER_SOCKET, BROKER_SOCKET_ENV } from './route';
export { BROKER_VERSION } from './version';
export { startBrokerServer, BrokerServer, BrokerServerOptions } from './serve/server';
export { TaskJournal, TaskRecord, TaskStatus, OutputChunk } from './serve/journal';
export { connectGuest, Guest } from './guest';
export { QgaGuest, QgaExecTask, QgaExitStatus, qgaFailure, QGA_PORT_NAME } from './qga-guest';
export { installAgent, AgentInstallOptions, AgentInstallResult, portholeChannelXml, attachChannelArgs, chardevSocketPath } from './agent-install';
