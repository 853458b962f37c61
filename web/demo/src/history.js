// A room's timeline (GET /chat/rooms/{roomId}/messages), whose `data-call` parts are the
// call history. Chat is not the calls SDK's business: a plain REST request with the
// session token; its errors read like the SDK's.
import { CallsError } from '@sendsar/calls';

export async function history(apiUrl, token, roomId) {
  const path = `/chat/rooms/${encodeURIComponent(roomId)}/messages?pageSize=20`;
  const reply = await fetch(apiUrl + path, { headers: { authorization: `Bearer ${token}` } });
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) throw CallsError.fromBody(reply.status, body, reply.headers.get('x-request-id'));
  return body.messages || [];
}
