// The guest page: someone outside the tenant's app opens a call link
// (guest.html#<link token>), gives a name, knocks, waits for the host, and once let in
// takes part in the call. The SDK does it all: CallsClient.knockAsGuest with the link,
// then a CallsClient whose session is the guest session (it hears this one call).
import { CallsClient } from '@sendsar/calls';
import { enterMedia, hearing, leaveMedia, mountMedia, remoteTracks } from './media.js';
import { $, demoConfig, el, label, showError } from './page.js';

// Where the guest is, in order; the last four are where it ends.
const PHASES = [
  'name',
  'knocking',
  'waiting',
  'admitted',
  'in-call',
  'denied',
  'removed',
  'left',
  'ended',
];
const SAYS = {
  knocking: 'Knocking…',
  waiting: 'Waiting for the host to let you in…',
  admitted: 'The host let you in: joining…',
  'in-call': 'In the call.',
  denied: 'The host did not let you in.',
  removed: 'You were removed from the call.',
  left: 'You left the call.',
  ended: 'The call has ended.',
};
const FINAL = new Set(['denied', 'removed', 'left', 'ended']);

const state = {
  phase: 'name',
  me: '', // guest:<guestId>
  call: null,
  media: null, // the LiveKit Room
  mediaError: '',
  connected: false, // the SDK's socket: connected and synced
};
let calls = null; // the CallsClient on the guest session
const mediaView = mountMedia($('call-media'), () => render());

// The browser test (tests/browser) reads the page's state through this.
window.demo = { state, remoteTracks: () => remoteTracks(state.media) };

// The link token is the URL's fragment: browsers never send it to a server.
const linkToken = decodeURIComponent(location.hash.slice(1));

async function knock(apiUrl, name) {
  moveTo('knocking');
  const guest = await CallsClient.knockAsGuest(linkToken, name, { baseUrl: apiUrl });
  state.me = `guest:${guest.guestId}`;
  $('me').textContent = `you are ${name} (guest)`;
  calls = new CallsClient({ baseUrl: apiUrl, getSessionToken: () => guest.token });
  calls.connectionChanged((connected) => (state.connected = connected));
  calls.backgroundError((err) => showError(err));
  calls.callUpdated(onCall);
  state.call = guest.call;
  onCall(guest.call);
}

// Every change of the call reaches here (the knock's reply, call.sync, call.admitted,
// call.denied, the accept's reply, ...): the guest's own participant says where it is.
function onCall(call) {
  if (!state.call || call.id !== state.call.id) return;
  state.call = call;
  const me = call.participants.find((p) => p.userId === state.me);
  const byState = { waiting: 'waiting', invited: 'admitted', joined: 'in-call', left: 'left' };
  let next = byState[me && me.state];
  if (me && me.state === 'removed') next = state.phase === 'in-call' ? 'removed' : 'denied';
  if (call.status === 'ended') next = 'ended';
  if (next) moveTo(next);
  render();
}

// Only forward: an older snapshot arriving late changes nothing.
function moveTo(phase) {
  const from = state.phase;
  if (FINAL.has(from) || PHASES.indexOf(phase) <= PHASES.indexOf(from)) return;
  state.phase = phase;
  if (phase === 'admitted') accept().catch(fail);
  if (FINAL.has(phase)) finish();
}

async function accept() {
  const { call, livekit } = await calls.acceptCall(state.call.roomId, state.call.id);
  const { room, error } = await enterMedia(livekit, call.type, mediaView);
  if (FINAL.has(state.phase)) {
    await leaveMedia(room, mediaView); // it ended while joining
    return;
  }
  state.media = room;
  state.mediaError = error;
  render();
}

async function finish() {
  const room = state.media;
  state.media = null;
  await leaveMedia(room, mediaView);
  calls.close(); // this guest session has nothing more to hear
  render();
}

function fail(err) {
  showError(err);
  render();
}

const nameOf = (userId) => {
  const person = state.call && state.call.participants.find((p) => p.userId === userId);
  return person ? label(person) : userId;
};

function render() {
  document.body.dataset.phase = state.phase;
  $('ask').hidden = state.phase !== 'name';
  $('knock').disabled = state.phase !== 'name';
  $('phase').hidden = !SAYS[state.phase];
  $('phase').textContent = SAYS[state.phase] || '';
  $('call').hidden = state.phase !== 'in-call';
  if (state.call && state.phase === 'in-call') {
    const people = state.call.participants.filter((p) => p.state === 'joined');
    $('participants').replaceChildren(...people.map((p) => el('li', { textContent: label(p) })));
  }
  $('hearing').textContent = hearing(state.media, nameOf);
  $('media-error').textContent = state.mediaError;
}

async function boot() {
  render();
  if (!linkToken) throw new Error('This page needs a guest link: guest.html#<link token>.');
  const { apiUrl } = await demoConfig();
  $('knock-form').onsubmit = (event) => {
    event.preventDefault();
    knock(apiUrl, $('name').value.trim()).catch((err) => {
      if (state.phase === 'knocking') state.phase = 'name'; // e.g. a bad name: try again
      fail(err);
    });
  };
  $('name').focus();
}

$('leave').onclick = () => calls.leaveCall(state.call.roomId, state.call.id).catch(fail);
boot().catch(fail);
