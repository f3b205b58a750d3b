import { ImageError } from './errors';

/** A half-open byte interval [start, end). */
export interface Interval {
  start: number;
  end: number;
}

const unsatisfiable = (size: number, why: string) => new ImageError(416, why, { 'content-range': `bytes */${size}` });

/** Checks that [offset, offset+size) lies inside an image of `imageSize` bytes. */
export function checkSpan(offset: unknown, size: unknown, imageSize: number): Interval {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(size) || (offset as number) < 0 || (size as number) < 0) {
    throw new ImageError(400, 'offset and size must be non-negative integers');
  }
  const start = offset as number;
  const end = start + (size as number);
  if (end > imageSize) throw unsatisfiable(imageSize, `span ${start}+${size} is past the end of the image (${imageSize} bytes)`);
  return { start, end };
}

/** Sorted, merged set of intervals: what an upload has written so far. */
export class IntervalSet {
  private list: Interval[] = [];

  add(start: number, end: number): void {
    if (end <= start) return;
    const out: Interval[] = [];
    let cur = { start, end };
    for (const iv of this.list) {
      if (iv.end < cur.start || iv.start > cur.end) out.push(iv);
      else cur = { start: Math.min(iv.start, cur.start), end: Math.max(iv.end, cur.end) };
    }
    out.push(cur);
    this.list = out.sort((a, b) => a.start - b.start);
  }

  clear(): void {
    this.list = [];
  }

  intervals(): Interval[] {
    return this.list.map((iv) => ({ ...iv }));
  }

  /** Bytes covered from offset 0 without a gap: where a sequential upload continues. */
  contiguousFromZero(): number {
    return this.list[0]?.start === 0 ? this.list[0].end : 0;
  }

  /** True when [start, end) lies inside one interval of the set. */
  contains(start: number, end: number): boolean {
    return this.list.some((iv) => iv.start <= start && end <= iv.end);
  }

  covered(): number {
    return this.list.reduce((n, iv) => n + iv.end - iv.start, 0);
  }

  /** The gaps inside [0, size). */
  missing(size: number): Interval[] {
    const gaps: Interval[] = [];
    let pos = 0;
    for (const iv of this.list) {
      if (iv.start > pos) gaps.push({ start: pos, end: Math.min(iv.start, size) });
      pos = Math.max(pos, iv.end);
    }
    if (pos < size) gaps.push({ start: pos, end: size });
    return gaps.filter((g) => g.end > g.start);
  }
}
