export * from './manifest';
export * from './spec';
export * from './tools';
export * from './build';
export * from './attach';
export * from './libvirt-live';
export * from './qmp-socket';
export * from './cli';
