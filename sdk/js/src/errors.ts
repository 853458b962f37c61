import type { ErrorBody } from './types.js';

/** Reasons the SDK itself gives, where no response from the API carries one. */
export const NETWORK_ERROR = 'NETWORK_ERROR'; // no HTTP response at all (status 0)
export const SESSION_UNAVAILABLE = 'SESSION_UNAVAILABLE'; // getSessionToken() failed (status 0)
export const UNKNOWN = 'UNKNOWN'; // an error response without an ErrorInfo (e.g. a proxy's)

/**
 * Every error the SDK throws or reports: the HTTP `status` (0 when there was no response),
 * the API's stable `reason` (its `google.rpc.ErrorInfo` reason, e.g. `CALL_ENDED`,
 * `NOT_ROOM_MEMBER`; see docs/api.md) and a `message` for people.
 */
export class CallsError extends Error {
  override readonly name = 'CallsError';
  readonly status: number;
  readonly reason: string;
  /** The `x-request-id` of the failed request: quote it when reporting a problem. */
  readonly requestId: string | undefined;

  constructor(
    status: number,
    reason: string,
    message: string,
    options: { requestId?: string | undefined; cause?: unknown } = {},
  ) {
    super(message);
    this.status = status;
    this.reason = reason;
    this.requestId = options.requestId;
    if (options.cause !== undefined) this.cause = options.cause;
  }

  /** The error an HTTP error response carries (Envoy's `{code, message, details}`). */
  static fromBody(status: number, body: unknown, requestId?: string): CallsError {
    const parsed = (typeof body === 'object' && body !== null ? body : {}) as ErrorBody;
    const info = (parsed.details ?? []).find((d) =>
      (d['@type'] ?? '').endsWith('google.rpc.ErrorInfo'),
    );
    const message =
      typeof parsed.message === 'string' && parsed.message ? parsed.message : `HTTP ${status}`;
    return new CallsError(status, info?.reason || UNKNOWN, message, { requestId });
  }
}

/** Any failure as a CallsError (errors of unknown origin keep theirs as `cause`). */
export function asCallsError(err: unknown, reason: string): CallsError {
  if (err instanceof CallsError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new CallsError(0, reason, message, { cause: err });
}
