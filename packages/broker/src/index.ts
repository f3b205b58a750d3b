export { connect, PortholeClient, ExecTask, Task, describeError, ConnectOptions, InstallOptions, InstallSource, InstallResult, ReadResult, ExecOptions, ExecCommand, ExitStatus } from './client';
export { connectorForTarget, libvirtChannelSocket, PORTHOLE_PORT_NAME } from './targets';
export { BROKER_VERSION } from './version';
export { startBrokerServer, BrokerServer, BrokerServerOptions } from './serve/server';
export { TaskJournal, TaskRecord, TaskStatus, OutputChunk } from './serve/journal';
