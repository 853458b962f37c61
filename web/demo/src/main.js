// Sendsar Calls demo: pick a demo user, see your rooms, call, ring, answer, talk, hang up,
// read the call history. Everything after sign-in goes through the client SDK
// (@sendsar/calls: REST, Socket.IO, ring state) and LiveKit's SDK, exactly as a customer's
// web app would use them.
import { CallsClient } from '@sendsar/calls';
import { history } from './history.js';
import { joinMedia, leaveMedia, remoteTracks } from './media.js';
import { Ringtone } from './ringtone.js';

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};

const state = {
  me: null, // {userId, name}
  rooms: [],
  call: null, // the call this page is in (or calling out on)
  incoming: null, // a call ringing for this user
  ended: null, // the last call this page was in, once ended
  media: null, // the LiveKit Room
  mediaError: '',
  connected: false, // the SDK's socket: connected and synced
  marks: { startClickedAt: 0, ringShownAt: 0 },
};
let calls = null; // the CallsClient
let api = { url: '', token: '' }; // for the chat history, which is not the calls SDK's
const ringtone = new Ringtone();
const mediaElements = () => ({
  local: $('local-media'),
  remote: $('remote-media'),
  onChange: render,
});

// The browser test (tests/browser) reads the page's state through this.
window.demo = { state, remoteTracks: () => remoteTracks(state.media) };

function log(text) {
  const line = el('li', { textContent: `${new Date().toLocaleTimeString()} ${text}` });
  $('log').prepend(line);
  while ($('log').childElementCount > 40) $('log').lastChild.remove();
}

function fail(err) {
  log(`error: ${err.message}`);
  $('error').textContent = err.message;
  $('error').hidden = false;
}

const roomOf = (roomId) => state.rooms.find((r) => r.id === roomId);
const roomName = (roomId) => (roomOf(roomId) || { name: roomId }).name;
const mine = (call) => call.participants.find((p) => p.userId === state.me.userId);
const others = (call) =>
  call.participants.filter((p) => p.userId !== state.me.userId).map((p) => p.userId);

// --- sign-in --------------------------------------------------------------------

async function boot() {
  const config = await (await fetch('config.json')).json();
  const apiUrl = config.apiUrl || location.origin;
  for (const user of config.users) {
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
  client.callUpdated(onCall);
}

// --- the call this page is in, as the SDK sees it ----------------------------------

function onCall(call) {
  if (state.incoming && state.incoming.id === call.id) state.incoming = call;
  if (state.call && state.call.id === call.id) {
    state.call = call;
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
  const room = state.media;
  state.media = null;
  await leaveMedia(room, mediaElements());
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
  if (livekit) await enterMedia(livekit, call.type);
}

async function accept() {
  const call = state.incoming;
  stopRinging();
  const reply = await calls.acceptCall(call.roomId, call.id);
  state.ended = null;
  state.call = reply.call;
  render();
  await enterMedia(reply.livekit, reply.call.type);
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

async function enterMedia(livekit, type) {
  state.mediaError = '';
  try {
    state.media = await joinMedia(livekit, type, mediaElements());
    await state.media.startAudio();
  } catch (err) {
    state.mediaError = `media: ${err.message} (is LiveKit running? \`make livekit\`)`;
  }
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
      ...call.participants.map((p) => el('li', { textContent: `${p.userId}: ${p.state}` })),
    );
    $('hangup').hidden = !state.call;
  }
  const heard = remoteTracks(state.media).filter((t) => t.kind === 'audio' && t.subscribed);
  $('hearing').textContent = heard.length
    ? `hearing ${heard.map((t) => t.identity).join(', ')}`
    : state.media
      ? 'connected to media, waiting for the other side…'
      : '';
  $('media-error').textContent = state.mediaError;
}

$('accept').onclick = () => accept().catch(fail);
$('decline').onclick = () => decline().catch(fail);
$('hangup').onclick = () => hangUp().catch(fail);
boot().catch(fail);
