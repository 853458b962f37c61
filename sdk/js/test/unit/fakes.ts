// Test doubles: a socket that the test plays the server of, a clock the test moves, a
// fetch that answers from a table, and unsigned JWTs with the claims a test needs.
import type { Clock } from '../../src/clock.js';
import type { SocketLike } from '../../src/connection.js';
import type { Call, CallEvent, Participant } from '../../src/types.js';

type Handler = (...args: any[]) => void;
type Auth = (cb: (data: object) => void) => void;

export class FakeSocket implements SocketLike {
  active = false;
  /** The auth data of each connection attempt, in order. */
  readonly attempts: Array<{ token?: string }> = [];
  private readonly handlers = new Map<string, Handler[]>();
  private readonly anyHandlers: Handler[] = [];

  constructor(private readonly auth: Auth) {
    this.connect(); // socket.io's autoConnect
  }

  on(event: string, fn: Handler): this {
    this.handlers.set(event, [...(this.handlers.get(event) ?? []), fn]);
    return this;
  }

  onAny(fn: Handler): this {
    this.anyHandlers.push(fn);
    return this;
  }

  connect(): this {
    this.active = true;
    this.auth((data) => this.attempts.push(data));
    return this;
  }

  disconnect(): this {
    this.active = false;
    this.fire('disconnect', 'io client disconnect');
    return this;
  }

  // --- what the server (the test) does ---

  /** Emits an event to the client, as the bridge does. */
  emit(event: string, payload: unknown): void {
    for (const fn of this.anyHandlers) fn(event, payload);
    this.fire(event, payload);
  }

  /** The server closes the socket (socket.io will not reconnect by itself). */
  serverClose(): void {
    this.active = false;
    this.fire('disconnect', 'io server disconnect');
  }

  /** The network drops (socket.io's manager reconnects by itself). */
  drop(): void {
    this.fire('disconnect', 'transport close');
  }

  /** The server refuses the connection attempt. */
  refuse(reason: string): void {
    this.active = false;
    const err = Object.assign(new Error(reason), { data: { reason, message: `no: ${reason}` } });
    this.fire('connect_error', err);
  }

  private fire(event: string, ...args: unknown[]): void {
    for (const fn of this.handlers.get(event) ?? []) fn(...args);
  }
}

export class FakeClock implements Clock {
  private time = 1_700_000_000_000;
  private nextId = 1;
  private readonly timers = new Map<number, { at: number; fn: () => void }>();

  now(): number {
    return this.time;
  }

  setTimeout(fn: () => void, ms: number): number {
    const id = this.nextId++;
    this.timers.set(id, { at: this.time + ms, fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  /** Moves time on, running the timers that fall due (and letting promises settle). */
  async advance(ms: number): Promise<void> {
    const end = this.time + ms;
    for (;;) {
      const due = [...this.timers.entries()]
        .filter(([, t]) => t.at <= end)
        .sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.timers.delete(due[0]);
      this.time = Math.max(this.time, due[1].at);
      due[1].fn();
      await settle();
    }
    this.time = end;
    await settle();
  }
}

/** Lets pending promise callbacks run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** An unsigned JWT with these claims (the SDK reads claims, the server verifies). */
export function jwt(claims: object): string {
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}.signature`;
}

export interface Sent {
  method: string;
  path: string;
  authorization: string;
  body: unknown;
}

export type Answer = { status?: number; body?: unknown; headers?: Record<string, string> };

/** A fetch answering each request from `answer` and recording it. */
export function fakeFetch(answer: (request: Sent) => Answer) {
  const requests: Sent[] = [];
  const fetch = async (
    input: string | URL | globalThis.Request,
    init?: RequestInit,
  ): Promise<Response> => {
    const url = new URL(String(input));
    const headers = (init?.headers ?? {}) as Record<string, string>;
    const request: Sent = {
      method: init?.method ?? 'GET',
      path: url.pathname,
      authorization: headers.authorization ?? '',
      body: init?.body === undefined ? undefined : JSON.parse(String(init.body)),
    };
    requests.push(request);
    const { status = 200, body = {}, headers: replyHeaders = {} } = answer(request);
    return new Response(JSON.stringify(body), { status, headers: replyHeaders });
  };
  return { fetch: fetch as typeof globalThis.fetch, requests };
}

// --- calls and events as the API renders them ---

export function participant(userId: string, state: string): Participant {
  return { userId, state };
}

export function call(id: string, status: string, participants: Participant[], extra = {}): Call {
  return {
    id,
    roomId: 'room_1',
    type: 'audio',
    mode: 'direct',
    status,
    createdBy: 'alice',
    createdAt: '2026-01-01T00:00:00Z',
    ringTimeoutSeconds: 45,
    participants,
    ...extra,
  };
}

export function event(
  id: string,
  type: string,
  c: Call,
  extra: Partial<CallEvent> = {},
): CallEvent {
  return {
    id,
    type,
    occurredAt: '2026-01-01T00:00:01Z',
    tenantId: 'tn_1',
    userId: 'alice',
    call: c,
    recipientUserIds: ['bob'],
    userIds: [],
    ...extra,
  };
}

/** Alice's 1:1 call to bob, in each state bob can see it. */
export const ringing = (id = 'call_1') =>
  call(id, 'ringing', [participant('alice', 'joined'), participant('bob', 'invited')]);
export const answered = (id = 'call_1') =>
  call(id, 'active', [participant('alice', 'joined'), participant('bob', 'joined')]);
export const cancelled = (id = 'call_1') =>
  call(id, 'ended', [participant('alice', 'left'), participant('bob', 'invited')], {
    endReason: 'cancelled',
  });
