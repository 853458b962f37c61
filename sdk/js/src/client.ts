// CallsClient: the calls of one app user, over REST and Socket.IO. See README.md.
import { realClock, type Clock } from './clock.js';
import { Connection, defaultIo, type Io } from './connection.js';
import { CallsError, UNKNOWN } from './errors.js';
import type { ClientEvents, Effect } from './events.js';
import { claims } from './jwt.js';
import { Listeners } from './listeners.js';
import { TokenRefresher } from './refresher.js';
import { paths, send, type Fetch, type Method } from './rest.js';
import { Session, type GetSessionToken } from './session.js';
import { CallState } from './state.js';
import type {
  Call,
  CallJoined,
  CallStarted,
  EndCallOptions,
  GuestSession,
  StartCallOptions,
  WireGuestSession,
} from './types.js';

export interface CallsClientOptions {
  /** The API's address, e.g. `https://api.example.com` (REST and Socket.IO). */
  baseUrl: string;
  /** A session token for the app user (from your backend's `POST /v1/sessions`). Asked
   * again whenever the one held expires or is refused. */
  getSessionToken: GetSessionToken;
  /** Defaults to the global `fetch`. */
  fetch?: Fetch;
  /** socket.io-client's `io`; defaults to the one this package depends on. */
  io?: Io;
  /** Time for the SDK's timers; for tests. */
  clock?: Clock;
}

export interface PushAnswerOptions {
  baseUrl: string;
  /** The call's room (the push carries `call.roomId`). */
  roomId: string;
  fetch?: Fetch;
}

export interface GuestOptions {
  baseUrl: string;
  fetch?: Fetch;
}

type Listener<K extends keyof ClientEvents> = (value: ClientEvents[K]) => void;
type Reply = { call?: Call };

const globalFetch: Fetch = (...args) => globalThis.fetch(...args);

export class CallsClient {
  private readonly baseUrl: string;
  private readonly fetch: Fetch;
  private readonly listeners = new Listeners<ClientEvents>();
  private readonly state = new CallState();
  private readonly session: Session;
  private readonly connection: Connection;
  private readonly refresher: TokenRefresher;

  constructor(options: CallsClientOptions) {
    if (!options.baseUrl) throw new TypeError('CallsClient: baseUrl is required');
    if (typeof options.getSessionToken !== 'function') {
      throw new TypeError('CallsClient: getSessionToken must be a function');
    }
    const clock = options.clock ?? realClock;
    this.baseUrl = options.baseUrl;
    this.fetch = options.fetch ?? globalFetch;
    this.session = new Session(options.getSessionToken, clock, (user) => this.state.setUser(user));
    this.refresher = new TokenRefresher(
      (roomId, callId) => this.joinedReply('POST', paths.call(roomId, callId, 'token')),
      (joined) => this.listeners.emit('tokenRefreshed', joined),
      (err) => this.listeners.emit('backgroundError', err),
      clock,
    );
    this.connection = new Connection(
      this.baseUrl,
      this.session,
      options.io ?? defaultIo,
      {
        connecting: () => this.state.connecting(),
        sync: (calls) => this.dispatch(this.state.sync(calls)),
        event: (event) => this.dispatch(this.state.event(event)),
        connected: (up) => this.listeners.emit('connectionChanged', up),
        error: (err) => this.listeners.emit('backgroundError', err),
      },
      clock,
    );
    this.connection.start();
  }

  /** Whether the socket is connected and synced (events flow). */
  get connected(): boolean {
    return this.connection.connected;
  }

  // --- calls ----------------------------------------------------------------------------

  /** Starts a call in the room, or joins its live call. */
  async startCall(roomId: string, options: StartCallOptions = {}): Promise<CallStarted> {
    const path = paths.calls(roomId);
    const body = { type: options.type, custom: options.custom };
    const { call, livekit } = await this.request<Partial<CallStarted>>('POST', path, body);
    if (!livekit) return { call: required(call, path) }; // over as it began (busy)
    const joined = joinedOf({ call, livekit }, path);
    this.refresher.track(joined);
    return joined;
  }

  /** Accepts a ringing 1:1 call, or joins a group call. */
  acceptCall(roomId: string, callId: string): Promise<CallJoined> {
    return this.joined(paths.call(roomId, callId, 'accept'));
  }

  declineCall(roomId: string, callId: string): Promise<Call> {
    return this.callOf(paths.call(roomId, callId, 'decline'), {});
  }

  /** Ends the call for everyone (1:1: either side; group: its creator). */
  endCall(roomId: string, callId: string, options: EndCallOptions = {}): Promise<Call> {
    return this.callOf(paths.call(roomId, callId, 'end'), { reason: options.reason });
  }

  /** Leaves a call; the last one out ends it. */
  leaveCall(roomId: string, callId: string): Promise<Call> {
    return this.callOf(paths.call(roomId, callId, 'leave'), {});
  }

  /** Fresh LiveKit credentials for a call this user is in; refreshed on schedule from now. */
  refreshToken(roomId: string, callId: string): Promise<CallJoined> {
    return this.joined(paths.call(roomId, callId, 'token'));
  }

  /** Every call ringing for this user now, across rooms (what an app opened from a push
   * asks first). */
  async ringingCalls(): Promise<Call[]> {
    const reply = await this.request<{ calls?: Call[] }>('GET', paths.ringing);
    return reply.calls ?? [];
  }

  /** The room's live call, if any. */
  async getActiveCall(roomId: string): Promise<Call | undefined> {
    return (await this.request<Reply>('GET', paths.active(roomId))).call;
  }

  // --- listeners: each returns a function that removes it -------------------------------

  /** A call rings for this user: once per ring (also when the ring began while the socket
   * was away and is still on). */
  callInvite(fn: Listener<'callInvite'>): () => void {
    return this.listeners.on('callInvite', fn);
  }
  callAccepted(fn: Listener<'callAccepted'>): () => void {
    return this.listeners.on('callAccepted', fn);
  }
  callDeclined(fn: Listener<'callDeclined'>): () => void {
    return this.listeners.on('callDeclined', fn);
  }
  callEnded(fn: Listener<'callEnded'>): () => void {
    return this.listeners.on('callEnded', fn);
  }
  callMissed(fn: Listener<'callMissed'>): () => void {
    return this.listeners.on('callMissed', fn);
  }
  /** This user's ring stopped: answered on any device, declined, cancelled, timed out. */
  callRingStopped(fn: Listener<'callRingStopped'>): () => void {
    return this.listeners.on('callRingStopped', fn);
  }
  callKnock(fn: Listener<'callKnock'>): () => void {
    return this.listeners.on('callKnock', fn);
  }
  callUpdated(fn: Listener<'callUpdated'>): () => void {
    return this.listeners.on('callUpdated', fn);
  }
  tokenRefreshed(fn: Listener<'tokenRefreshed'>): () => void {
    return this.listeners.on('tokenRefreshed', fn);
  }
  connectionChanged(fn: Listener<'connectionChanged'>): () => void {
    return this.listeners.on('connectionChanged', fn);
  }
  backgroundError(fn: Listener<'backgroundError'>): () => void {
    return this.listeners.on('backgroundError', fn);
  }

  /** Disconnects and stops every timer; the client is not used again. */
  close(): void {
    this.refresher.stop();
    this.connection.close();
  }

  // --- answering from a push, before there is a session ----------------------------------

  /**
   * Accepts or declines the call a VoIP push rang for, with the push's ring token as the
   * only credential (docs/webhooks.md, "Push to answer"). The token names its call.
   */
  static answerFromPush(
    ringToken: string,
    action: 'accept',
    options: PushAnswerOptions,
  ): Promise<CallJoined>;
  static answerFromPush(
    ringToken: string,
    action: 'decline',
    options: PushAnswerOptions,
  ): Promise<Call>;
  static async answerFromPush(
    ringToken: string,
    action: 'accept' | 'decline',
    options: PushAnswerOptions,
  ): Promise<CallJoined | Call> {
    const callId = claims(ringToken).cid;
    if (typeof callId !== 'string' || !callId) {
      throw new CallsError(401, 'UNAUTHENTICATED', 'not a ring token (rt_...)');
    }
    const path = paths.call(options.roomId, callId, action);
    const fetchImpl = options.fetch ?? globalFetch;
    const reply = await send<Partial<CallJoined>>(
      fetchImpl,
      options.baseUrl,
      'POST',
      path,
      ringToken,
      {},
    );
    return action === 'accept' ? joinedOf(reply, path) : required(reply.call, path);
  }

  // --- guests: people outside the tenant's app, with a call link ---------------------------

  /**
   * Knocks on the call a link names, with the link's token (`gl_...`) as the only
   * credential: a guest session for that one call (`POST /v1/guests`). Hand its `token` to
   * a client as `getSessionToken` to hear the call and accept it once admitted.
   */
  static async knockAsGuest(
    linkToken: string,
    name: string,
    options: GuestOptions,
  ): Promise<GuestSession> {
    const fetchImpl = options.fetch ?? globalFetch;
    const path = paths.guests;
    const reply = await send<Partial<WireGuestSession>>(
      fetchImpl,
      options.baseUrl,
      'POST',
      path,
      linkToken,
      { name },
    );
    return {
      guestId: required(reply.guestId, path),
      token: required(reply.token, path),
      expiresAt: required(reply.expiresAt, path),
      call: required(reply.call, path),
    };
  }

  // --- internals ------------------------------------------------------------------------

  private dispatch(effects: Effect[]): void {
    for (const effect of effects) {
      if (effect.name === 'callUpdated' && !this.state.joined(effect.value.id)) {
        this.refresher.untrack(effect.value.id); // ended, or this user left or was removed
      }
      this.listeners.emit(effect.name, effect.value as never);
    }
  }

  /** A request with the session token; a refused token is renewed and tried once more. */
  private async request<T extends object>(method: Method, path: string, body?: object): Promise<T> {
    let token = await this.session.token();
    let reply: T;
    try {
      reply = await send<T>(this.fetch, this.baseUrl, method, path, token, body);
    } catch (err) {
      if (!(err instanceof CallsError) || err.status !== 401) throw err;
      this.session.invalidate(token);
      token = await this.session.token();
      reply = await send<T>(this.fetch, this.baseUrl, method, path, token, body);
    }
    const { call } = reply as Reply;
    if (call && method === 'POST') this.dispatch(this.state.reply(call));
    return reply;
  }

  private async callOf(path: string, body: object): Promise<Call> {
    return required((await this.request<Reply>('POST', path, body)).call, path);
  }

  private async joinedReply(method: Method, path: string): Promise<CallJoined> {
    return joinedOf(await this.request<Partial<CallJoined>>(method, path, {}), path);
  }

  private async joined(path: string): Promise<CallJoined> {
    const joined = await this.joinedReply('POST', path);
    this.refresher.track(joined);
    return joined;
  }
}

function joinedOf(reply: Partial<CallJoined>, path: string): CallJoined {
  return { call: required(reply.call, path), livekit: required(reply.livekit, path) };
}

function required<T>(value: T | undefined, path: string): T {
  if (value === undefined) throw new CallsError(0, UNKNOWN, `${path}: unexpected reply`);
  return value;
}
