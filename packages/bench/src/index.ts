export * from './table';
export { benchChannel } from './channel';
export { SECTIONS, BenchSection } from './sections';
