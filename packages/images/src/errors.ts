/** An error the data or control API answers with a specific HTTP status; the message names the cause. */
export class ImageError extends Error {
  constructor(readonly status: number, message: string, readonly headers: Record<string, string> = {}) {
    super(message);
    this.name = 'ImageError';
  }
}

export const refuse = (status: number, message: string, headers?: Record<string, string>): never => {
  throw new ImageError(status, message, headers);
};
