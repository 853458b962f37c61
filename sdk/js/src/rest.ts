// One REST request through the API's front door: bearer credentials, JSON both ways, and
// every failure as a CallsError.
import { CallsError, NETWORK_ERROR } from './errors.js';

export type Fetch = typeof globalThis.fetch;
export type Method = 'GET' | 'POST';

export async function send<T>(
  fetchImpl: Fetch,
  baseUrl: string,
  method: Method,
  path: string,
  bearer: string,
  body?: object,
): Promise<T> {
  const headers: Record<string, string> = { authorization: `Bearer ${bearer}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  let reply: Response;
  try {
    reply = await fetchImpl(baseUrl.replace(/\/+$/, '') + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new CallsError(0, NETWORK_ERROR, `${method} ${path}: ${message}`, { cause: err });
  }
  const data: unknown = await reply.json().catch(() => undefined);
  if (!reply.ok) {
    throw CallsError.fromBody(reply.status, data, reply.headers.get('x-request-id') ?? undefined);
  }
  return (data ?? {}) as T;
}

const id = encodeURIComponent;
export const paths = {
  calls: (roomId: string) => `/chat/rooms/${id(roomId)}/calls`,
  call: (roomId: string, callId: string, verb: string) =>
    `/chat/rooms/${id(roomId)}/calls/${id(callId)}/${verb}`,
  active: (roomId: string) => `/chat/rooms/${id(roomId)}/calls/active`,
  ringing: '/chat/calls/ringing',
  guests: '/v1/guests',
};
