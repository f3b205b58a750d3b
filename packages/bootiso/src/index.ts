export * from './errors';
export * from './url';
export * from './domain-xml';
export * from './qemu-args';
export * from './sniff';
export * from './preflight';
export * from './https-server';
export * from './cli';
