// The Socket.IO connection: authenticated with the session token on every (re)connect,
// back on its feet after any close, and a source of `call.sync` and call events.
//
// socket.io-client reconnects by itself (with back-off) after a transport failure, but not
// when the server closed the socket or refused it. The bridge does both: it closes a socket
// when its session expires (`socket.closing` TOKEN_EXPIRED first: reconnect at once with a
// fresh token) or when it cannot read the call state (SYNC_FAILED), and it refuses a
// connect with an invalid token or over its socket limits. Those reconnects are ours.
import { io as socketIo, type ManagerOptions, type SocketOptions } from 'socket.io-client';
import { Backoff } from './backoff.js';
import type { Clock } from './clock.js';
import { CallsError, SESSION_UNAVAILABLE, UNKNOWN, asCallsError } from './errors.js';
import { EVENT } from './events.js';
import type { Session } from './session.js';
import type { Call, WireCallEvent } from './types.js';

/** The part of a socket.io-client Socket the SDK uses (tests give a fake one). */
export interface SocketLike {
  readonly active: boolean;
  on(event: string, fn: (...args: any[]) => void): unknown;
  onAny(fn: (event: string, ...args: any[]) => void): unknown;
  connect(): unknown;
  disconnect(): unknown;
}

export type Io = (url: string, options: Partial<ManagerOptions & SocketOptions>) => SocketLike;

export const defaultIo: Io = (url, options) => socketIo(url, options);

export interface ConnectionHandlers {
  connecting(): void;
  sync(calls: Call[]): void;
  event(event: WireCallEvent): void;
  connected(up: boolean): void;
  error(err: CallsError): void;
}

interface Refusal extends Error {
  data?: { reason?: string; message?: string };
}

const SERVER_CLOSED = 'io server disconnect';
const isObject = (value: unknown): value is object => typeof value === 'object' && value !== null;

export class Connection {
  private socket: SocketLike | undefined;
  private token = ''; // the token of the current connection attempt ('' if none could be had)
  private expired = false; // the server said our session expired
  private closed = false;
  private up = false;
  private retry: unknown;
  private readonly backoff = new Backoff();

  constructor(
    private readonly baseUrl: string,
    private readonly session: Session,
    private readonly io: Io,
    private readonly handlers: ConnectionHandlers,
    private readonly clock: Clock,
  ) {}

  get connected(): boolean {
    return this.up;
  }

  start(): void {
    const socket = this.io(this.baseUrl, {
      // The websocket transport needs no sticky sessions across bridge replicas.
      transports: ['websocket'],
      auth: (cb) => this.authenticate(cb),
      reconnectionDelay: 500,
      reconnectionDelayMax: 30_000,
      randomizationFactor: 0.5,
    });
    socket.on(EVENT.sync, (payload: unknown) => this.synced(payload));
    socket.onAny((name: string, payload: unknown) => {
      if (name.startsWith('call.') && name !== EVENT.sync && isObject(payload)) {
        this.handlers.event(payload as WireCallEvent);
      }
    });
    socket.on('socket.closing', (payload: unknown) => {
      if (isObject(payload) && (payload as { reason?: unknown }).reason === 'TOKEN_EXPIRED') {
        this.session.invalidate(this.token);
        this.expired = true;
      }
    });
    socket.on('disconnect', (reason: string) => this.disconnected(reason));
    socket.on('connect_error', (err: Refusal) => this.refused(err));
    this.socket = socket;
  }

  close(): void {
    this.closed = true;
    this.clock.clearTimeout(this.retry);
    this.socket?.disconnect();
  }

  private authenticate(cb: (data: object) => void): void {
    this.handlers.connecting();
    this.session.token().then(
      (token) => {
        this.token = token;
        cb({ token });
      },
      (err: unknown) => {
        // Reported here; the refusal that follows is retried with back-off, unreported.
        this.token = '';
        this.handlers.error(asCallsError(err, SESSION_UNAVAILABLE));
        cb({ token: '' });
      },
    );
  }

  private synced(payload: unknown): void {
    const calls = isObject(payload) ? (payload as { calls?: Call[] }).calls : undefined;
    this.backoff.reset();
    this.expired = false;
    this.handlers.sync(Array.isArray(calls) ? calls : []);
    if (!this.up) {
      this.up = true;
      this.handlers.connected(true);
    }
  }

  private disconnected(reason: string): void {
    if (this.up) {
      this.up = false;
      this.handlers.connected(false);
    }
    if (this.closed || reason !== SERVER_CLOSED) return; // socket.io reconnects the rest
    this.reconnect(this.expired ? 0 : this.backoff.next());
  }

  private refused(err: Refusal): void {
    if (this.closed || this.socket?.active) return; // a transport failure: socket.io retries
    const reason = err.data?.reason ?? UNKNOWN;
    if (reason === 'UNAUTHENTICATED') this.session.invalidate(this.token);
    if (this.token) {
      const status = reason === 'TOO_MANY_SOCKETS' ? 429 : 401;
      this.handlers.error(new CallsError(status, reason, err.data?.message ?? err.message));
    }
    this.reconnect(this.backoff.next());
  }

  private reconnect(delayMs: number): void {
    this.clock.clearTimeout(this.retry);
    this.retry = this.clock.setTimeout(() => {
      if (!this.closed) this.socket?.connect();
    }, delayMs);
  }
}
