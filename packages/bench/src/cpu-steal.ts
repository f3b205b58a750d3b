import { readFileSync } from 'node:fs';

/** The machine-wide CPU time counters of /proc/stat, in ticks. */
export interface CpuTicks {
  total: number;
  /** Time this VM's vCPUs wanted to run while the hypervisor ran something else. */
  steal: number;
}

/** Undefined where /proc/stat is missing or has no steal column (not Linux, an old kernel). */
export function cpuTicks(): CpuTicks | undefined {
  let line: string;
  try {
    line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0];
  } catch {
    return undefined;
  }
  // cpu user nice system idle iowait irq softirq steal [guest guest_nice] — guest time is already in user.
  const fields = line.trim().split(/\s+/).slice(1, 9).map(Number);
  if (fields.length < 8 || fields.some((n) => !Number.isFinite(n))) return undefined;
  return { total: fields.reduce((a, b) => a + b, 0), steal: fields[7] };
}

/**
 * The share of the machine's CPU time the hypervisor took between two readings:
 * on a shared host it can be a third, and every figure measured meanwhile is low.
 */
export function stealShare(from: CpuTicks | undefined, to: CpuTicks | undefined): number | undefined {
  if (!from || !to || to.total <= from.total) return undefined;
  return (to.steal - from.steal) / (to.total - from.total);
}
