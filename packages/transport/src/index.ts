export * from './channel';
export * from './slab-pool';
export * from './unix-socket';
export * from './virtio-serial';
export * from './serial';
export * from './retry';
export * from './native-modules';
export * from './windows-port';
