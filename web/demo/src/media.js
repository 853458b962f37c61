// The call's media with LiveKit's JS SDK: join the call's LiveKit room with the token
// from start/accept, publish the microphone (and camera for video calls), and attach
// whatever the other side publishes.
import { Room, RoomEvent, Track } from 'livekit-client';
import { el } from './page.js';

// The call's media block, alike on both pages (in `slot`): what the page hears, a media
// error, the other side's tracks and the local camera. Returns what joinMedia and
// leaveMedia take: where the tracks go, and what to call when they change.
export function mountMedia(slot, onChange) {
  const local = el('div', { id: 'local-media' });
  const remote = el('div', { id: 'remote-media' });
  slot.replaceChildren(
    el('p', { id: 'hearing' }),
    el('p', { id: 'media-error', className: 'error' }),
    el('div', { className: 'media' }, remote, local),
  );
  return { local, remote, onChange };
}

export async function joinMedia({ url, token }, type, { local, remote, onChange }) {
  const room = new Room({ adaptiveStream: true, dynacast: true });
  room
    .on(RoomEvent.TrackSubscribed, (track, publication, participant) => {
      const element = track.attach();
      element.dataset.identity = participant.identity;
      element.dataset.kind = track.kind;
      remote.appendChild(element);
      onChange();
    })
    .on(RoomEvent.TrackUnsubscribed, (track) => {
      track.detach().forEach((element) => element.remove());
      onChange();
    })
    .on(RoomEvent.ParticipantConnected, onChange)
    .on(RoomEvent.ParticipantDisconnected, onChange)
    .on(RoomEvent.Disconnected, onChange);
  await room.connect(url, token);
  await room.localParticipant.setMicrophoneEnabled(true);
  if (type === 'video') {
    await room.localParticipant.setCameraEnabled(true);
    const camera = room.localParticipant.getTrackPublication(Track.Source.Camera);
    if (camera && camera.track) local.appendChild(camera.track.attach());
  }
  onChange();
  return room;
}

export async function leaveMedia(room, { local, remote }) {
  if (room) await room.disconnect();
  local.replaceChildren();
  remote.replaceChildren();
}

// What the SDK says about the other side's tracks (the browser test reads this).
export function remoteTracks(room) {
  if (!room) return [];
  const tracks = [];
  for (const participant of room.remoteParticipants.values()) {
    for (const publication of participant.trackPublications.values()) {
      tracks.push({
        identity: participant.identity,
        kind: publication.kind,
        source: publication.source,
        subscribed: publication.isSubscribed && Boolean(publication.track),
      });
    }
  }
  return tracks;
}

// Joins the call's media and starts its sound: `{room}`, or `{error}` to show (the call
// itself goes on without media, e.g. when LiveKit is not running).
export async function enterMedia(livekit, type, elements) {
  try {
    const room = await joinMedia(livekit, type, elements);
    await room.startAudio();
    return { room, error: '' };
  } catch (err) {
    return { room: null, error: `media: ${err.message} (is LiveKit running? \`make livekit\`)` };
  }
}

// What the page says it hears: the other side's subscribed audio, by name.
export function hearing(room, nameOf) {
  const heard = remoteTracks(room).filter((t) => t.kind === 'audio' && t.subscribed);
  if (heard.length) return `hearing ${heard.map((t) => nameOf(t.identity)).join(', ')}`;
  return room ? 'connected to media, waiting for the other side…' : '';
}
