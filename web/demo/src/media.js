// The call's media with LiveKit's JS SDK: join the call's LiveKit room with the token
// from start/accept, publish the microphone (and camera for video calls), and attach
// whatever the other side publishes.
import { Room, RoomEvent, Track } from 'livekit-client';

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
