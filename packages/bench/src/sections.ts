import { BenchTable, MiB } from './table';
import { benchChannel } from './channel';
import { benchXenstore } from './xenstore';
import { benchVm } from './vm';
import { benchImages } from './images';
import { benchGuestArch } from './guest-arch';
import { benchScale } from './scale';

export interface BenchSection {
  name: string;
  /** The sizes this run uses (read from the environment), printed and saved with the results. */
  sizes(): Record<string, number>;
  run(sizes: Record<string, number>): Promise<BenchTable | BenchTable[]>;
}

/** PORTHOLE_BENCH_QUICK=1 shrinks every default for a quick run; a PORTHOLE_BENCH_* variable sets one size. */
function size(name: string, full: number, quick: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return process.env.PORTHOLE_BENCH_QUICK === '1' ? quick : full;
  const value = Number(text);
  if (!Number.isInteger(value) || value <= 0) throw new Error(`${name} must be a positive integer, got ${JSON.stringify(text)}`);
  return value;
}

const log = (m: string) => process.stderr.write(`  ${m}\n`);

/** In the order they run. */
export const SECTIONS: BenchSection[] = [
  {
    name: 'channel',
    sizes: () => ({ mib: size('PORTHOLE_BENCH_CHANNEL_MIB', 256, 32) }),
    run: (s) => benchChannel({ bytes: s.mib * MiB }),
  },
  {
    name: 'xenstore',
    sizes: () => ({ mib: size('PORTHOLE_BENCH_XENSTORE_MIB', 16, 2), roundTrips: size('PORTHOLE_BENCH_XENSTORE_ROUND_TRIPS', 300, 50) }),
    run: (s) => benchXenstore({ bytes: s.mib * MiB, roundTrips: s.roundTrips }),
  },
  {
    name: 'vm',
    sizes: () => ({
      fileMib: size('PORTHOLE_BENCH_VM_MIB', 64, 8),
      execRuns: size('PORTHOLE_BENCH_EXEC_RUNS', 30, 5),
      firstLineRuns: size('PORTHOLE_BENCH_FIRST_LINE_RUNS', 3, 1),
      execStdoutMib: size('PORTHOLE_BENCH_EXEC_STDOUT_MIB', 100, 8),
    }),
    run: (s) => benchVm({ fileBytes: s.fileMib * MiB, execRuns: s.execRuns, firstLineRuns: s.firstLineRuns, execStdoutBytes: s.execStdoutMib * MiB }, log),
  },
  {
    name: 'images',
    sizes: () => ({ mib: size('PORTHOLE_BENCH_IMAGES_MIB', 2048, 256) }),
    run: (s) => benchImages({ bytes: s.mib * MiB }, log),
  },
  {
    name: 'arch',
    sizes: () => ({ fileMib: size('PORTHOLE_BENCH_ARCH_MIB', 32, 4), execRuns: size('PORTHOLE_BENCH_ARCH_EXEC_RUNS', 30, 5) }),
    run: (s) => benchGuestArch({ fileBytes: s.fileMib * MiB, execRuns: s.execRuns }, log),
  },
  {
    name: 'scale',
    sizes: () => ({ vms: size('PORTHOLE_BENCH_SCALE_VMS', 256, 32), idleSeconds: size('PORTHOLE_BENCH_SCALE_IDLE_S', 20, 5) }),
    // PORTHOLE_BENCH_SCALE_BASELINE: another checkout's packages/broker/dist/cli.js, compared in the same run.
    run: (s) => benchScale({ vms: s.vms, idleSeconds: s.idleSeconds, baseline: process.env.PORTHOLE_BENCH_SCALE_BASELINE || undefined }, log),
  },
];
