export { QmpClient, QmpError, QmpEvent, QmpGreeting, QmpConnectOptions } from './qmp';
export { findLibvirtChannelSocket, libvirtChannelSocket, VirshOptions } from './libvirt';
