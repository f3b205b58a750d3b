import { ImageError } from './errors';

/** A half-open byte interval [start, end). */
export interface Interval {
  start: number;
  end: number;
}

const unsatisfiable = (size: number, why: string) => new ImageError(416, why, { 'content-range': `bytes */${size}` });

/** Parses a single `Range: bytes=a-b | a- | -n` against an image of `size` bytes; multiple ranges are refused. */
export function parseRange(header: string, size: number): Interval {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) throw new ImageError(400, `unsupported Range header "${header.slice(0, 80)}" (one bytes=a-b range only)`);
  if (m[1] === '') {
    const n = Math.min(Number(m[2]), size);
    if (n <= 0) throw unsatisfiable(size, `range ${header} is empty for an image of ${size} bytes`);
    return { start: size - n, end: size };
  }
  const start = Number(m[1]);
  const last = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (start >= size || start > last) throw unsatisfiable(size, `range ${header} is past the end of the image (${size} bytes)`);
  return { start, end: last + 1 };
}

/** Parses `Content-Range: bytes a-b/total|*` of a ranged write; the range must lie inside the image. */
export function parseContentRange(header: string, size: number): Interval {
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(header.trim());
  if (!m) throw new ImageError(400, `bad Content-Range "${header.slice(0, 80)}" (expected "bytes a-b/total" or "bytes a-b/*")`);
  const start = Number(m[1]);
  const end = Number(m[2]) + 1;
  if (end <= start) throw new ImageError(400, `bad Content-Range "${header}": end before start`);
  if (m[3] !== '*' && Number(m[3]) !== size) throw unsatisfiable(size, `Content-Range total ${m[3]} differs from the image size ${size}`);
  if (end > size) throw unsatisfiable(size, `write ${start}-${end - 1} is past the end of the image (${size} bytes)`);
  return { start, end };
}

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
