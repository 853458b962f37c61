// Sendsar Calls demo: pick a demo user, see your rooms, call, ring, answer, talk, hang up,
// invite a guest and let them in, read the call history. Everything after sign-in goes
// through the client SDK (@sendsar/calls: REST, Socket.IO, ring state) and LiveKit's SDK,
// exactly as a customer's web app would use them.
import { CallsClient } from '@sendsar/calls';
import { history } from './history.js';
import { answerKnock, inviteGuest } from './lobby.js';
import { enterMedia, hearing, leaveMedia, mountMedia, remoteTracks } from './media.js';
import { $, demoConfig, el, label, showError } from './page.js';
import { Ringtone } from './ringtone.js';

const state = {
  me: null, // {userId, name}
  rooms: [],
  call: null, // the call this page is in (or calling out on)
  incoming: null, // a call ringing for this user
  ended: null, // the last call this page was in, once ended
  media: null, // the LiveKit Room
  mediaError: '',
  connected: false, // the SDK's socket: connected and synced
  guestLink: '', // the guest page's URL for the call this page is in, once invited
  knocks: [], // guests knocking on that call: participants still waiting
  marks: { startClickedAt: 0, ringShownAt: 0, knockShownAt: 0 },
};
let calls = null; // the CallsClient
let api = { url: '', token: '' }; // for the chat history, which is not the calls SDK's
const ringtone = new Ringtone();
const mediaView = mountMedia($('call-media'), () => render());

// The browser test (tests/browser) reads the page's state through this.
window.demo = { state, remoteTracks: () => remoteTracks(state.media) };

function log(text) {
  const line = el('li', { textContent: `${new Date().toLocaleTimeString()} ${text}` });
  $('log').prepend(line);
  while ($('log').childElementCount > 40) $('log').lastChild.remove();
}

function fail(err) {
  log(`error: ${err.message}`);
  showError(err);
}

const roomOf = (roomId) => state.rooms.find((r) => r.id === roomId);
const roomName = (roomId) => (roomOf(roomId) || { name: roomId }).name;
const mine = (call) => call.participants.find((p) => p.userId === state.me.userId);
const notLetIn = (p) => p.guest && (p.state === 'waiting' || p.state === 'removed');
const others = (call) =>
  call.participants.filter((p) => p.userId !== state.me.userId && !notLetIn(p)).map(label);
const waiting = (call, userId) =>
  call.participants.some((p) => p.userId === userId && p.state === 'waiting');
const nameOf = (userId) => {
  const call = state.call || state.ended;
  const person = call && call.participants.find((p) => p.userId === userId);
  return person ? label(person) : userId;
};

// --- sign-in --------------------------------------------------------------------

async function boot() {
  const { apiUrl, users } = await demoConfig();
  for (const user of users) {
    const button = el('button', { id: `user-${user.id}`, textContent: user.name });
    button.onclick = () => signIn(apiUrl, user.id).catch(fail);
    $('users').append(button);
  }
  const wanted = new URLSearchParams(location.search).get('user');
  if (wanted) await signIn(apiUrl, wanted);
}

// The demo server hands out session tokens (a tenant backend's job): one at sign-in, and a
// fresh one whenever the SDK asks again (the session expired).
async function newSession(userId) {
  const reply = await fetch('session', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ userId }),
  });
  const body = await reply.json();
  if (!reply.ok) throw new Error(body.message || `session: ${reply.status}`);
  return body;
}

async function signIn(apiUrl, userId) {
  ringtone.unlock(); // inside the click: browsers allow sound after a user gesture
  const first = await newSession(userId);
  state.me = { userId: first.userId, name: first.name };
  state.rooms = first.rooms;
  api = { url: apiUrl, token: first.token };
  let unused = first.token; // the SDK's first token; later ones are fresh
  calls = new CallsClient({
    baseUrl: apiUrl,
    getSessionToken: async () => {
      api.token = unused || (await newSession(userId)).token;
      unused = '';
      return api.token;
    },
  });
  calls.backgroundError((err) => log(`${err.reason}: ${err.message}`));
  listen(calls);
  document.title = `${first.name} · Sendsar Calls demo`;
  $('me').textContent = `signed in as ${first.name}`;
  $('login').hidden = true;
  $('home').hidden = false;
  renderRooms();
}

// A call already ringing when the page opens rings too: the SDK's first call.sync says so.
function listen(client) {
  client.connectionChanged((connected) => {
    state.connected = connected;
    log(connected ? 'socket connected and synced' : 'socket disconnected; reconnecting');
  });
  const logged = (type) => (event) => {
    const by = event.userId ? ` (${event.userId})` : '';
    log(`${type}${by}${event.id ? '' : ' (derived by the SDK: no event of its own)'}`);
  };
  client.callAccepted(logged('call.accepted'));
  client.callDeclined(logged('call.declined'));
  client.callEnded(logged('call.ended'));
  client.callMissed(logged('call.missed'));
  client.callInvite((event) => {
    logged('call.invite')(event);
    if (state.call || state.incoming) return; // one call at a time on this page
    state.incoming = event.call;
    state.marks.ringShownAt = Date.now();
    ringtone.start();
    render();
  });
  client.callRingStopped((event) => {
    logged(`call.ring_stopped: ${event.reason}`)(event);
    if (state.incoming && state.incoming.id === event.call.id) stopRinging();
    render();
  });
  // A guest knocks on the call this page is in: Admit / Deny (the server tells the call's
  // joined participants; the call's creator, or either side of a 1:1 call, decides).
  client.callKnock((event) => {
    logged('call.knock')(event);
    if (!state.call || state.call.id !== event.call.id) return;
    const guest = event.call.participants.find((p) => p.userId === event.userId);
    if (!guest || state.knocks.some((k) => k.userId === guest.userId)) return;
    state.knocks.push(guest);
    state.marks.knockShownAt = Date.now();
    render();
  });
  client.callUpdated(onCall);
}

// --- the call this page is in, as the SDK sees it ----------------------------------

function onCall(call) {
  if (state.incoming && state.incoming.id === call.id) state.incoming = call;
  if (state.call && state.call.id === call.id) {
    state.call = call;
    state.knocks = state.knocks.filter((k) => waiting(call, k.userId)); // let in elsewhere
    const me = mine(call);
    if (call.status === 'ended' || (me && me.state === 'left')) finishCall(call);
  }
  render();
}

function stopRinging() {
  state.incoming = null;
  ringtone.stop();
}

async function finishCall(call) {
  state.ended = call;
  state.call = null;
  state.guestLink = '';
  state.knocks = [];
  const room = state.media;
  state.media = null;
  await leaveMedia(room, mediaView);
  render();
  await showHistory(call.roomId);
}

async function startCall(roomId, type) {
  state.marks.startClickedAt = Date.now();
  const { call, livekit } = await calls.startCall(roomId, { type });
  state.ended = null;
  state.call = call;
  render();
  if (call.status === 'ended') return finishCall(call); // e.g. busy
  if (livekit) await joinCallMedia(livekit, call.type);
}

async function accept() {
  const call = state.incoming;
  stopRinging();
  const reply = await calls.acceptCall(call.roomId, call.id);
  state.ended = null;
  state.call = reply.call;
  render();
  await joinCallMedia(reply.livekit, reply.call.type);
}

async function decline() {
  const call = state.incoming;
  stopRinging();
  render();
  await calls.declineCall(call.roomId, call.id);
}

// The reply (ended for a 1:1 call, left for a group) reaches onCall through the SDK's
// callUpdated, which finishes the call on this page.
async function hangUp() {
  const call = state.call;
  if (call.mode === 'group') {
    await calls.leaveCall(call.roomId, call.id); // the others stay; the last one out ends it
  } else {
    const reason = call.status === 'ringing' ? 'cancelled' : undefined;
    await calls.endCall(call.roomId, call.id, { reason });
  }
}

async function joinCallMedia(livekit, type) {
  state.mediaError = '';
  const { room, error } = await enterMedia(livekit, type, mediaView);
  state.media = room;
  state.mediaError = error;
  render();
}

// --- guests ------------------------------------------------------------------------

async function invite() {
  state.guestLink = await inviteGuest(api.url, api.token, state.call);
  log('guest link made: send it to your guest');
  render();
}

async function letIn(guest, verb) {
  await answerKnock(api.url, api.token, state.call, guest.userId, verb);
  state.knocks = state.knocks.filter((k) => k.userId !== guest.userId);
  log(`${verb === 'admit' ? 'let in' : 'turned away'}: ${label(guest)}`);
  render();
}

// --- history ---------------------------------------------------------------------

const minutes = (s) => `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;

async function showHistory(roomId) {
  $('history-title').textContent = `Call history · ${roomName(roomId)}`;
  const messages = await history(api.url, api.token, roomId);
  const items = [];
  for (const message of messages || []) {
    for (const part of message.parts || []) {
      if (part.type !== 'data-call' || !part.data) continue;
      const d = part.data;
      const when = new Date(d.startedAt || message.createdAt).toLocaleTimeString();
      const length = d.answeredAt ? ` · ${minutes(d.durationSeconds || 0)}` : '';
      items.push(
        el('li', {
          className: `outcome-${d.outcome}`,
          textContent: `${when} · ${d.type} call by ${d.initiator} · ${d.outcome}${
            d.endReason && d.endReason !== d.outcome ? ` (${d.endReason})` : ''
          }${length}`,
          title: d.callId,
        }),
      );
      items[items.length - 1].dataset.callId = d.callId;
    }
  }
  $('history-list').replaceChildren(
    ...(items.length ? items : [el('li', { textContent: 'no calls yet' })]),
  );
}

// --- rendering -------------------------------------------------------------------

function renderRooms() {
  $('room-list').replaceChildren(
    ...state.rooms.map((room) => {
      const item = el(
        'li',
        {},
        el('strong', { textContent: room.name }),
        el('span', {
          className: 'members',
          textContent: room.members.filter((m) => m !== state.me.userId).join(', '),
        }),
      );
      item.dataset.room = room.id;
      for (const type of ['audio', 'video']) {
        const button = el('button', { className: `call-${type}`, textContent: `${type} call` });
        button.onclick = () => startCall(room.id, type).catch(fail);
        item.append(button);
      }
      const history = el('button', { className: 'history', textContent: 'history' });
      history.onclick = () => showHistory(room.id).catch(fail);
      item.append(history);
      return item;
    }),
  );
}

function statusText(call) {
  const who = others(call).join(', ');
  if (call.status === 'ringing') return `Calling ${who}… (${call.type})`;
  if (call.status === 'active')
    return `In ${call.type === 'audio' ? 'an' : 'a'} ${call.type} call with ${who}`;
  return `Call ended${call.endReason ? `: ${call.endReason}` : ''}`;
}

function render() {
  const busy = Boolean(state.call || state.incoming);
  document
    .querySelectorAll('#room-list button[class^="call-"]')
    .forEach((b) => (b.disabled = busy));

  $('incoming').hidden = !state.incoming;
  if (state.incoming) {
    const call = state.incoming;
    $('incoming-text').textContent =
      `${call.createdBy} is calling (${call.type}) in ${roomName(call.roomId)}`;
  }

  const call = state.call || state.ended;
  $('call').hidden = !call;
  if (call) {
    $('call').dataset.status = state.call ? call.status : 'ended';
    $('call').dataset.callId = call.id;
    $('call-status').textContent = statusText(state.call ? call : { ...call, status: 'ended' });
    $('participants').replaceChildren(
      ...call.participants.map((p) => el('li', { textContent: `${label(p)}: ${p.state}` })),
    );
    $('hangup').hidden = !state.call;
  }
  renderGuests();
  $('hearing').textContent = hearing(state.media, nameOf);
  $('media-error').textContent = state.mediaError;
}

// The call's guests: its creator invites (makes a link); the creator, or either side of a
// 1:1 call, lets the knocking ones in or turns them away.
function renderGuests() {
  const call = state.call;
  const me = call && mine(call);
  const creator = Boolean(call && call.createdBy === state.me.userId);
  $('guests').hidden = !(call && me && me.state === 'joined');
  $('invite').hidden = $('guests').hidden || !creator;
  if ($('guests').hidden) return;
  $('guest-link-box').hidden = !state.guestLink;
  $('guest-link').value = state.guestLink;
  $('guest-link-open').href = state.guestLink || '#';
  const decides = creator || call.mode !== 'group';
  // Rebuilt only when it changes: a render (e.g. a media event) never swaps a button
  // from under a click.
  const shown = `${decides} ${state.knocks.map((k) => k.userId).join()}`;
  if ($('lobby').dataset.shown === shown) return;
  $('lobby').dataset.shown = shown;
  $('lobby').replaceChildren(
    ...state.knocks.map((guest) => {
      const item = el('li', { className: 'knock' }, `${label(guest)} is waiting to join `);
      item.dataset.userId = guest.userId;
      for (const [verb, text, style] of [
        ['admit', 'Admit', 'accept'],
        ['deny', 'Deny', 'decline'],
      ]) {
        const button = el('button', { className: `${verb} ${style}`, textContent: text });
        button.disabled = !decides;
        button.onclick = () => letIn(guest, verb).catch(fail);
        item.append(button);
      }
      if (!decides)
        item.append(el('span', { className: 'hint', textContent: '(the host decides)' }));
      return item;
    }),
  );
}

$('accept').onclick = () => accept().catch(fail);
$('decline').onclick = () => decline().catch(fail);
$('hangup').onclick = () => hangUp().catch(fail);
$('invite').onclick = () => invite().catch(fail);
boot().catch(fail);
