// Sendsar Calls demo: pick a demo user, see your rooms, call, ring, answer, talk, hang up,
// read the call history. Everything after sign-in goes through the public REST API and
// Socket.IO, exactly as a customer's web app would use them.
import { io } from 'socket.io-client';
import { client } from './api.js';
import { joinMedia, leaveMedia, remoteTracks } from './media.js';
import { Ringer } from './ringer.js';

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
  connected: false, // the Socket.IO connection
  marks: { startClickedAt: 0, ringShownAt: 0 },
};
let api = null;
let socket = null;
const ringer = new Ringer();
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

async function signIn(apiUrl, userId) {
  ringer.unlock(); // inside the click: browsers allow sound after a user gesture
  const reply = await fetch('session', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ userId }),
  });
  const session = await reply.json();
  if (!reply.ok) throw new Error(session.message || `session: ${reply.status}`);
  state.me = { userId: session.userId, name: session.name };
  state.rooms = session.rooms;
  api = client(apiUrl, session.token);
  document.title = `${session.name} · Sendsar Calls demo`;
  $('me').textContent = `signed in as ${session.name}`;
  $('login').hidden = true;
  $('home').hidden = false;
  renderRooms();
  connectSocket(apiUrl, session.token);
  // A call may already be ringing (the page was opened after the invite).
  for (const room of state.rooms) {
    const { call } = await api.activeCall(room.id);
    if (call) onCall(call);
  }
}

function connectSocket(apiUrl, token) {
  socket = io(apiUrl, { auth: { token }, transports: ['websocket'] });
  socket.on('connect', () => {
    state.connected = true;
    log('socket connected');
  });
  socket.on('disconnect', (reason) => {
    state.connected = false;
    log(`socket disconnected: ${reason}`);
  });
  socket.on('connect_error', (err) => log(`socket: ${err.message}`));
  socket.on('call.sync', ({ calls }) => (calls || []).forEach(onCall));
  for (const type of [
    'call.invite',
    'call.accepted',
    'call.declined',
    'call.ended',
    'call.missed',
    'call.participant_joined',
    'call.participant_left',
    'call.ring_stopped',
  ]) {
    socket.on(type, (event) => {
      log(`${type}${event.userId ? ` (${event.userId})` : ''}`);
      if (event.call) onCall(event.call);
    });
  }
}

// --- the call state, converged from every call object the API or an event hands us ----

function onCall(call) {
  const me = mine(call);
  if (state.incoming && state.incoming.id === call.id) {
    if (call.status === 'ended' || !me || me.state !== 'invited') stopRinging();
    else state.incoming = call;
  }
  if (state.call && state.call.id === call.id) {
    state.call = call;
    if (call.status === 'ended' || (me && me.state === 'left')) finishCall(call);
  } else if (!state.call && !state.incoming && call.status !== 'ended' && me) {
    if (me.state === 'invited') {
      state.incoming = call;
      state.marks.ringShownAt = Date.now();
      ringer.start();
    }
  }
  render();
}

function stopRinging() {
  state.incoming = null;
  ringer.stop();
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
  const { call, livekit } = await api.start(roomId, type);
  state.ended = null;
  state.call = call;
  render();
  if (call.status === 'ended') return finishCall(call); // e.g. busy
  if (livekit) await enterMedia(livekit, call.type);
}

async function accept() {
  const call = state.incoming;
  stopRinging();
  const reply = await api.accept(call.roomId, call.id);
  state.ended = null;
  state.call = reply.call;
  render();
  await enterMedia(reply.livekit, reply.call.type);
}

async function decline() {
  const call = state.incoming;
  stopRinging();
  render();
  await api.decline(call.roomId, call.id);
}

async function hangUp() {
  const call = state.call;
  const reply =
    call.mode === 'group'
      ? await api.leave(call.roomId, call.id) // the others stay; the last one out ends it
      : await api.end(call.roomId, call.id, call.status === 'ringing' ? 'cancelled' : undefined);
  onCall(reply.call); // ended (1:1) or left (group): either finishes the call on this page
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
  const { messages } = await api.messages(roomId);
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
