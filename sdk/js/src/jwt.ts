// Reading (never verifying: the server does that) the claims of the JWTs the SDK holds:
// a session token names its user and expiry, a LiveKit token its expiry, a ring token
// (`rt_<JWT>`) its call.

export interface Claims {
  sub?: string; // the user
  exp?: number; // expiry, epoch seconds
  iat?: number; // issued at, epoch seconds
  cid?: string; // a ring token's call
}

/** The token's claims, or `{}` when it is not a JWT the SDK can read. */
export function claims(token: string): Claims {
  const payload = token.split('.')[1];
  if (!payload) return {};
  try {
    const base64 = payload.replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const parsed: unknown = JSON.parse(new TextDecoder().decode(bytes));
    return typeof parsed === 'object' && parsed !== null ? (parsed as Claims) : {};
  } catch {
    return {};
  }
}
