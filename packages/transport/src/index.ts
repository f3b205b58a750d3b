export * from './channel';
export * from './unix-socket';
export * from './virtio-serial';
export * from './serial';
export * from './retry';
