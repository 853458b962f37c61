// The listener names of the client and what each receives.
import type { CallsError } from './errors.js';
import type { Call, CallEvent, CallJoined } from './types.js';

/** Socket.IO event names (docs/api.md, Events). */
export const EVENT = {
  sync: 'call.sync',
  invite: 'call.invite',
  accepted: 'call.accepted',
  declined: 'call.declined',
  ended: 'call.ended',
  missed: 'call.missed',
  ringStopped: 'call.ring_stopped',
  knock: 'call.knock',
} as const;

export interface ClientEvents {
  /** A call started ringing for this user (once per ring). */
  callInvite: CallEvent;
  callAccepted: CallEvent;
  callDeclined: CallEvent;
  /** A call this user knew of ended (once per call). */
  callEnded: CallEvent;
  callMissed: CallEvent;
  /** A ring of this user stopped, on whichever device it was answered (once per ring). */
  callRingStopped: CallEvent;
  callKnock: CallEvent;
  /** The SDK's view of a call changed (any event, `call.sync`, a reply to this client). */
  callUpdated: Call;
  /** Fresh LiveKit credentials for a call this client joined, before the old ones expire. */
  tokenRefreshed: CallJoined;
  /** The socket is up and synced (true), or down and reconnecting (false). */
  connectionChanged: boolean;
  /** What failed in the background (session renewal, a refusal, a LiveKit refresh). */
  backgroundError: CallsError;
}

/** One listener call the state logic asks for. */
export type Effect = {
  [K in keyof ClientEvents]: { name: K; value: ClientEvents[K] };
}[keyof ClientEvents];
