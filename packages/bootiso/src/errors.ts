/** Base of every error this package throws on purpose; `code` is stable for callers and JSON output. */
export class BootIsoError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** The URL is not acceptable (scheme, host, port, credentials, characters). */
export class InvalidUrlError extends BootIsoError {}

/** The domain XML cannot be read or cannot take the CD-ROM. */
export class DomainXmlError extends BootIsoError {}

/** Base of the preflight failures: the server would not serve the image the way QEMU needs. */
export class PreflightError extends BootIsoError {}

/** TCP/TLS connection could not be made (refused, unknown host, reset). */
export class ServerUnreachableError extends PreflightError {}

/** No answer within the time limit. */
export class PreflightTimeoutError extends PreflightError {}

/** The certificate does not verify against the trust store. */
export class CertificateError extends PreflightError {}

/** The server answered with an unexpected HTTP status or a redirect we will not follow. */
export class HttpStatusError extends PreflightError {}

/** The server does not honour byte ranges (QEMU refuses such servers). */
export class RangeNotSupportedError extends PreflightError {}

/** The server does not report the image size (QEMU needs it). */
export class SizeUnknownError extends PreflightError {}

/** The bytes served are not an ISO 9660 image; `looksLike` says what they seem to be. */
export class NotIsoError extends PreflightError {
  constructor(
    message: string,
    readonly looksLike: string,
  ) {
    super('NOT_ISO', message);
  }
}
