export * from './wire';
export * from './transport';
export * from './client';
export { XenstoreServer, XenstoreServerOptions, XenstoredDialect } from './server/server';
export * from './channel';
