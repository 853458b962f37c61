// @sendsar/calls: the client SDK of Sendsar Calls.
export {
  CallsClient,
  type CallsClientOptions,
  type GuestOptions,
  type PushAnswerOptions,
} from './client.js';
export { CallsError, NETWORK_ERROR, SESSION_UNAVAILABLE, UNKNOWN } from './errors.js';
export type { ClientEvents } from './events.js';
export type { GetSessionToken } from './session.js';
export type { Io, SocketLike } from './connection.js';
export type { Clock } from './clock.js';
export type {
  Call,
  CallEvent,
  CallJoined,
  CallStarted,
  EndCallOptions,
  EndReason,
  ErrorInfo,
  GuestSession,
  LiveKitCredentials,
  Participant,
  StartCallOptions,
} from './types.js';
