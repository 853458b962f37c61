// The host's side of guests: a call link to send to a guest, and letting a knocking guest
// in or turning them away (docs/api.md, "Guests and the lobby"). The guest's side is the
// SDK's (CallsClient.knockAsGuest) on the guest page.
import { request } from './rest.js';

const GUEST_PREFIX = 'guest:';
const callPath = (call) =>
  `/chat/rooms/${encodeURIComponent(call.roomId)}/calls/${encodeURIComponent(call.id)}`;

// A link to the call for guests, with the API's defaults (a day, 100 knocks; it stops
// working when the call ends). Its token goes in the guest page's URL fragment, which
// browsers never send to a server: it stays out of every access log.
export async function inviteGuest(apiUrl, token, call) {
  const made = await request(apiUrl, token, 'POST', `${callPath(call)}/links`, {});
  return new URL(`guest.html#${made.token}`, location.href).href;
}

// `verb`: 'admit' or 'deny'; `userId`: the guest's participant id, guest:<guestId>.
export async function answerKnock(apiUrl, token, call, userId, verb) {
  const guestId = encodeURIComponent(userId.slice(GUEST_PREFIX.length));
  const path = `${callPath(call)}/participants/${guestId}/${verb}`;
  return (await request(apiUrl, token, 'POST', path, {})).call;
}
