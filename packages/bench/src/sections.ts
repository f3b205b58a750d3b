import { BenchTable } from './table';
import { benchChannel } from './channel';
import { benchXenstore } from './xenstore';

export interface BenchSection {
  name: string;
  run(): Promise<BenchTable | BenchTable[]>;
}

/** In the order they run. */
export const SECTIONS: BenchSection[] = [
  { name: 'channel', run: () => benchChannel() },
  { name: 'xenstore', run: () => benchXenstore() },
];
