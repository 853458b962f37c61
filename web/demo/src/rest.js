// What the calls SDK does not cover, as plain REST requests with the app user's session
// token (a customer's app would call its own chat API the same way); errors read like the
// SDK's.
import { CallsError } from '@sendsar/calls';

export async function request(apiUrl, token, method, path, body) {
  const headers = { authorization: `Bearer ${token}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const reply = await fetch(apiUrl + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await reply.json().catch(() => ({}));
  if (!reply.ok) throw CallsError.fromBody(reply.status, data, reply.headers.get('x-request-id'));
  return data;
}
