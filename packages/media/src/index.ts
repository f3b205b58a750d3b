export * from './manifest';
export * from './spec';
export * from './tools';
export * from './build';
export * from './vdsm';
export * from './attach';
export * from './qmp-socket';
export * from './cli';
