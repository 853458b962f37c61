// The app user's session token: asked of the app's getSessionToken() when there is none,
// when it is about to expire, and when the server refused it; one question at a time.
import type { Clock } from './clock.js';
import { SESSION_UNAVAILABLE, asCallsError, CallsError } from './errors.js';
import { claims } from './jwt.js';

export type GetSessionToken = () => Promise<string> | string;

// A token is renewed this long before its expiry (at most a quarter of its lifetime, so
// that short-lived tokens are still used), to allow for clock skew and requests in flight.
const RENEW_BEFORE_MS = 10_000;

interface Held {
  token: string;
  renewAt: number; // epoch ms; Infinity when the token's expiry cannot be read
}

export class Session {
  private held: Held | undefined;
  private pending: Promise<string> | undefined;

  constructor(
    private readonly getSessionToken: GetSessionToken,
    private readonly clock: Clock,
    private readonly onUser: (userId: string | undefined) => void,
  ) {}

  /** A token to send now. */
  async token(): Promise<string> {
    if (this.held && this.clock.now() < this.held.renewAt) return this.held.token;
    this.pending ??= this.renew().finally(() => {
      this.pending = undefined;
    });
    return this.pending;
  }

  /** The server refused this token (expired, revoked): the next token() asks anew. */
  invalidate(token: string): void {
    if (this.held?.token === token) this.held = undefined;
  }

  private async renew(): Promise<string> {
    let token: unknown;
    try {
      token = await this.getSessionToken();
    } catch (err) {
      throw asCallsError(err, SESSION_UNAVAILABLE);
    }
    if (typeof token !== 'string' || !token) {
      throw new CallsError(0, SESSION_UNAVAILABLE, 'getSessionToken() gave no token');
    }
    const { sub, exp, iat } = claims(token);
    let renewAt = Infinity;
    if (typeof exp === 'number') {
      const lifetime = typeof iat === 'number' ? (exp - iat) * 1000 : Infinity;
      renewAt = exp * 1000 - Math.min(RENEW_BEFORE_MS, lifetime / 4);
    }
    this.held = { token, renewAt };
    this.onUser(typeof sub === 'string' ? sub : undefined);
    return token;
  }
}
