// A room's timeline (GET /chat/rooms/{roomId}/messages), whose `data-call` parts are the
// call history. Chat is not the calls SDK's business.
import { request } from './rest.js';

export async function history(apiUrl, token, roomId) {
  const path = `/chat/rooms/${encodeURIComponent(roomId)}/messages?pageSize=20`;
  return (await request(apiUrl, token, 'GET', path)).messages || [];
}
