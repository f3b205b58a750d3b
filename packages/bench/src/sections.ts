import { BenchTable, MiB } from './table';
import { benchChannel } from './channel';
import { benchImages } from './images';
import { benchXenstore } from './xenstore';

export interface BenchSection {
  name: string;
  run(): Promise<BenchTable | BenchTable[]>;
}

/** In the order they run. */
export const SECTIONS: BenchSection[] = [
  { name: 'channel', run: () => benchChannel() },
  { name: 'xenstore', run: () => benchXenstore() },
  { name: 'images', run: () => benchImages({ bytes: Number(process.env.PORTHOLE_BENCH_IMAGES_MIB || 2048) * MiB }, (m) => process.stderr.write(`  ${m}\n`)) },
];
