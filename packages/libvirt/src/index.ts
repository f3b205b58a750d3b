export * from './errors';
export * from './uri';
export * from './virsh';
export * from './domain-xml';
export * from './channel';
