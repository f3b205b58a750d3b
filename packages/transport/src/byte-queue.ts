/**
 * Bytes that arrive in pieces (socket or pipe reads), taken from the front a given number at a time. Taken
 * bytes are views of the pieces they came in: a copy is made only when one buffer is asked for and the
 * bytes span pieces.
 */
export class ByteQueue {
  private pieces: Buffer[] = [];
  /** Bytes held. */
  length = 0;

  push(piece: Buffer): void {
    this.pieces.push(piece);
    this.length += piece.length;
  }

  /** The next `n` bytes (at most `length`), as views of the pieces they came in. */
  takeParts(n: number): Buffer[] {
    const taken: Buffer[] = [];
    for (let need = n; need > 0;) {
      const piece = this.pieces[0];
      if (piece.length <= need) {
        taken.push(piece);
        this.pieces.shift();
        need -= piece.length;
      } else {
        taken.push(piece.subarray(0, need));
        this.pieces[0] = piece.subarray(need);
        need = 0;
      }
    }
    this.length -= n;
    return taken;
  }

  /** The next `n` bytes (at most `length`) as one buffer. */
  take(n: number): Buffer {
    const parts = this.takeParts(n);
    return parts.length === 1 ? parts[0] : Buffer.concat(parts, n);
  }

  /** The first `n` bytes (at most `length`), left in the queue. */
  peek(n: number): Buffer {
    return this.pieces[0].length >= n ? this.pieces[0] : Buffer.concat(this.pieces, n);
  }
}
