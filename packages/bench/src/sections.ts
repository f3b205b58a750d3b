import { BenchTable } from './table';
import { benchChannel } from './channel';

export interface BenchSection {
  name: string;
  run(): Promise<BenchTable | BenchTable[]>;
}

/** In the order they run. */
export const SECTIONS: BenchSection[] = [
  { name: 'channel', run: () => benchChannel() },
];
