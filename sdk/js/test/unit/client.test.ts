// CallsClient against a fake socket, fetch and clock: the connection's life (reconnects,
// session renewal), listeners, REST errors, LiveKit token refresh, answering from a push,
// a guest's knock.
import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import {
  CallsClient,
  CallsError,
  type Call,
  type CallEvent,
  type ClientEvents,
} from '../../src/index.js';
import type { Io } from '../../src/connection.js';
import {
  FakeClock,
  FakeSocket,
  answered,
  call,
  cancelled,
  event,
  fakeFetch,
  jwt,
  participant,
  ringing,
  settle,
  type Answer,
  type Sent,
} from './fakes.js';

interface Harness {
  client: CallsClient;
  socket: FakeSocket;
  clock: FakeClock;
  requests: Sent[];
  tokens: string[]; // every session token getSessionToken() gave
  seen: Array<[keyof ClientEvents, unknown]>;
}

const clients: CallsClient[] = [];
afterEach(() => clients.splice(0).forEach((c) => c.close()));

/** Bob's client; each session token lives `ttl` seconds from when it is asked for. */
async function bob(answer: (r: Sent) => Answer = () => ({}), ttl = 3600): Promise<Harness> {
  const clock = new FakeClock();
  const { fetch, requests } = fakeFetch(answer);
  const tokens: string[] = [];
  let socket: FakeSocket | undefined;
  const io: Io = (_url, options) => {
    socket = new FakeSocket(options.auth as (cb: (data: object) => void) => void);
    return socket;
  };
  const getSessionToken = async () => {
    const now = Math.floor(clock.now() / 1000);
    const token = jwt({ sub: 'bob', iat: now, exp: now + ttl, n: tokens.length });
    tokens.push(token);
    return token;
  };
  const client = new CallsClient({
    baseUrl: 'https://api.test',
    getSessionToken,
    fetch,
    io,
    clock,
  });
  clients.push(client);
  const seen: Harness['seen'] = [];
  const names: Array<keyof ClientEvents> = [
    'callInvite',
    'callAccepted',
    'callEnded',
    'callRingStopped',
    'connectionChanged',
    'tokenRefreshed',
    'backgroundError',
  ];
  for (const name of names) {
    const on = client[name].bind(client) as (fn: (value: unknown) => void) => () => void;
    on((value) => seen.push([name, value]));
  }
  await settle();
  assert.ok(socket);
  return { client, socket, clock, requests, tokens, seen };
}

const only = (h: Harness, name: keyof ClientEvents) =>
  h.seen.filter(([n]) => n === name).map(([, v]) => v);

describe('the connection', () => {
  test('connects with the session token and is up once synced', async () => {
    const h = await bob();
    assert.deepEqual(h.socket.attempts, [{ token: h.tokens[0] }]);
    assert.equal(h.client.connected, false);
    h.socket.emit('call.sync', { calls: [] });
    assert.equal(h.client.connected, true);
    assert.deepEqual(only(h, 'connectionChanged'), [true]);
  });

  test('the session expiring: a fresh token is asked for and the socket reconnects at once, listeners kept', async () => {
    const h = await bob();
    h.socket.emit('call.sync', { calls: [] });
    h.socket.emit('socket.closing', { reason: 'TOKEN_EXPIRED', message: 'expired' });
    h.socket.serverClose();
    assert.equal(h.client.connected, false);
    await h.clock.advance(0);
    assert.equal(h.tokens.length, 2);
    assert.deepEqual(h.socket.attempts, [{ token: h.tokens[0] }, { token: h.tokens[1] }]);
    h.socket.emit('call.sync', { calls: [] });
    h.socket.emit('call.invite', event('evt_1', 'call.invite', ringing()));
    assert.equal(only(h, 'callInvite').length, 1);
    assert.deepEqual(only(h, 'connectionChanged'), [true, false, true]);
  });

  test('a token about to expire is renewed before it is sent', async () => {
    const h = await bob(() => ({ body: { call: ringing() } }), 60);
    await h.client.getActiveCall('room_1');
    await h.clock.advance(55_000); // within the last quarter of its life
    await h.client.getActiveCall('room_1');
    assert.equal(h.tokens.length, 2);
    assert.deepEqual(
      h.requests.map((r) => r.authorization),
      [`Bearer ${h.tokens[0]}`, `Bearer ${h.tokens[1]}`],
    );
  });

  test('a server close for another reason reconnects after a back-off', async () => {
    const h = await bob();
    h.socket.emit('call.sync', { calls: [] });
    h.socket.emit('socket.closing', { reason: 'SYNC_FAILED', message: 'db away' });
    h.socket.serverClose();
    await h.clock.advance(0);
    assert.equal(h.socket.attempts.length, 1);
    await h.clock.advance(500);
    assert.equal(h.socket.attempts.length, 2);
    assert.equal(h.tokens.length, 1); // the session is still good
  });

  test('a refused token is dropped, reported, and a fresh one tried after a back-off', async () => {
    const h = await bob();
    h.socket.refuse('UNAUTHENTICATED');
    const [error] = only(h, 'backgroundError') as CallsError[];
    assert.ok(error instanceof CallsError);
    assert.equal(error.status, 401);
    assert.equal(error.reason, 'UNAUTHENTICATED');
    await h.clock.advance(500);
    assert.equal(h.tokens.length, 2);
    assert.deepEqual(h.socket.attempts.at(-1), { token: h.tokens[1] });
  });

  test('a dropped network is left to socket.io, which reconnects by itself', async () => {
    const h = await bob();
    h.socket.emit('call.sync', { calls: [] });
    h.socket.drop();
    await h.clock.advance(60_000);
    assert.equal(h.socket.attempts.length, 1);
    assert.deepEqual(only(h, 'connectionChanged'), [true, false]);
  });

  test('getSessionToken failing is reported and retried', async () => {
    let fail = true;
    const clock = new FakeClock();
    let socket: FakeSocket | undefined;
    const errors: CallsError[] = [];
    const client = new CallsClient({
      baseUrl: 'https://api.test',
      getSessionToken: async () => {
        if (fail) throw new Error('backend down');
        return jwt({ sub: 'bob' });
      },
      io: (_url, options) => (socket = new FakeSocket(options.auth as never)),
      clock,
    });
    clients.push(client);
    client.backgroundError((err) => errors.push(err));
    await settle();
    assert.equal(errors[0]?.reason, 'SESSION_UNAVAILABLE');
    assert.equal(errors[0]?.message, 'backend down');
    socket?.refuse('UNAUTHENTICATED'); // the empty token: not reported a second time
    assert.equal(errors.length, 1);
    fail = false;
    await clock.advance(500);
    assert.equal(socket?.attempts.at(-1)?.token?.split('.').length, 3);
  });
});

describe('events across a reconnect', () => {
  test('a ring caught by the sync after a drop calls callInvite once, then stops once', async () => {
    const h = await bob();
    h.socket.emit('call.sync', { calls: [] });
    h.socket.drop();
    h.socket.connect(); // socket.io's own reconnect
    await settle();
    h.socket.emit('call.sync', { calls: [ringing()] });
    h.socket.emit('call.invite', event('evt_1', 'call.invite', ringing())); // held behind the sync
    assert.equal(only(h, 'callInvite').length, 1);
    h.socket.drop();
    h.socket.connect();
    await settle();
    h.socket.emit('call.sync', { calls: [] }); // cancelled while away
    h.socket.emit('call.ended', event('evt_2', 'call.ended', cancelled()));
    assert.equal(only(h, 'callRingStopped').length, 1);
    assert.equal(only(h, 'callEnded').length, 1);
  });

  test('an unsubscribed listener is not called; the others are', async () => {
    const h = await bob();
    const calls: CallEvent[] = [];
    const off = h.client.callInvite((e) => calls.push(e));
    off();
    h.socket.emit('call.sync', { calls: [] });
    h.socket.emit('call.invite', event('evt_1', 'call.invite', ringing()));
    assert.equal(calls.length, 0);
    assert.equal(only(h, 'callInvite').length, 1);
  });
});

describe('REST', () => {
  test('an error response is a CallsError with the status, the ErrorInfo reason and the request id', async () => {
    const h = await bob(() => ({
      status: 409,
      headers: { 'x-request-id': 'req-1' },
      body: {
        code: 10,
        message: 'the call has ended',
        details: [{ '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: 'CALL_ENDED' }],
      },
    }));
    await assert.rejects(h.client.acceptCall('room_1', 'call_1'), (err: unknown) => {
      assert.ok(err instanceof CallsError);
      assert.deepEqual(
        [err.status, err.reason, err.message, err.requestId],
        [409, 'CALL_ENDED', 'the call has ended', 'req-1'],
      );
      return true;
    });
  });

  test('no response at all is a CallsError with status 0', async () => {
    const client = new CallsClient({
      baseUrl: 'https://api.test',
      getSessionToken: () => jwt({ sub: 'bob' }),
      fetch: async () => {
        throw new TypeError('fetch failed');
      },
      io: (_url, options) => new FakeSocket(options.auth as never),
    });
    clients.push(client);
    await assert.rejects(client.ringingCalls(), { status: 0, reason: 'NETWORK_ERROR' });
  });

  test('a 401 renews the session and tries once more', async () => {
    let refusals = 1;
    const h = await bob(() => {
      if (refusals-- > 0) return { status: 401, body: { code: 16, message: 'expired' } };
      return { body: { calls: [ringing()] } };
    });
    assert.equal((await h.client.ringingCalls()).length, 1);
    assert.deepEqual(
      h.requests.map((r) => r.authorization),
      [`Bearer ${h.tokens[0]}`, `Bearer ${h.tokens[1]}`],
    );
  });

  test('requests go to the contract paths with the contract bodies', async () => {
    const h = await bob((r) => ({
      body: r.path.endsWith('/active')
        ? {}
        : { call: answered(), livekit: { url: 'u', token: 't' } },
    }));
    await h.client.startCall('room_1', { type: 'video', custom: { ticket: 7 } });
    await h.client.endCall('room_1', 'call_1', { reason: 'cancelled' });
    await h.client.leaveCall('room_1', 'call_1');
    await h.client.declineCall('room_1', 'call_1');
    assert.equal(await h.client.getActiveCall('room/1'), undefined);
    assert.deepEqual(
      h.requests.map((r) => [r.method, r.path, r.body]),
      [
        ['POST', '/chat/rooms/room_1/calls', { type: 'video', custom: { ticket: 7 } }],
        ['POST', '/chat/rooms/room_1/calls/call_1/end', { reason: 'cancelled' }],
        ['POST', '/chat/rooms/room_1/calls/call_1/leave', {}],
        ['POST', '/chat/rooms/room_1/calls/call_1/decline', {}],
        ['GET', '/chat/rooms/room%2F1/calls/active', undefined],
      ],
    );
  });
});

describe('LiveKit tokens', () => {
  const livekitToken = (clock: FakeClock, n: number) =>
    jwt({ exp: Math.floor(clock.now() / 1000) + 600, video: { room: 'call_1' }, n });

  test('refreshed a minute before they expire, handed over, and no more once the call ends', async () => {
    let minted = 0;
    let clock: FakeClock | undefined;
    const h = await bob(() => ({
      body: {
        call: answered(),
        livekit: { url: 'wss://lk', token: livekitToken(clock!, minted++) },
      },
    }));
    clock = h.clock;
    const { livekit } = await h.client.acceptCall('room_1', 'call_1');
    await h.clock.advance(539_000);
    assert.equal(h.requests.length, 1);
    await h.clock.advance(1_000);
    assert.deepEqual(h.requests.at(-1)?.path, '/chat/rooms/room_1/calls/call_1/token');
    const [refreshed] = only(h, 'tokenRefreshed') as Array<{ livekit: { token: string } }>;
    assert.notEqual(refreshed?.livekit.token, livekit.token);
    await h.clock.advance(540_000); // the next one, from the refreshed token's expiry
    assert.equal(only(h, 'tokenRefreshed').length, 2);
    h.socket.emit('call.sync', { calls: [] });
    h.socket.emit('call.ended', event('evt_1', 'call.ended', cancelled()));
    await h.clock.advance(3_600_000);
    assert.equal(only(h, 'tokenRefreshed').length, 2);
  });

  test('a refusal stops the refreshing and is reported; a failure is retried', async () => {
    let replies: Answer[] = [];
    const h = await bob(() => replies.shift() ?? {});
    replies = [
      { body: { call: answered(), livekit: { url: 'u', token: livekitToken(h.clock, 0) } } },
    ];
    await h.client.acceptCall('room_1', 'call_1');
    replies = [
      { status: 503, body: { message: 'busy' } },
      {
        status: 409,
        body: {
          message: 'ended',
          details: [{ '@type': 'x/google.rpc.ErrorInfo', reason: 'CALL_ENDED' }],
        },
      },
    ];
    await h.clock.advance(540_000);
    assert.equal(h.requests.length, 2);
    await h.clock.advance(1_000); // the back-off
    assert.equal(h.requests.length, 3);
    assert.deepEqual(
      (only(h, 'backgroundError') as CallsError[]).map((e) => e.reason),
      ['CALL_ENDED'],
    );
    await h.clock.advance(3_600_000);
    assert.equal(h.requests.length, 3);
  });
});

describe('answerFromPush', () => {
  test('answers the call the ring token names, with the ring token alone', async () => {
    const ringToken = `rt_${jwt({ sub: 'bob', cid: 'call_9', exp: 2_000_000_000 })}`;
    const { fetch, requests } = fakeFetch(() => ({
      body: { call: answered('call_9'), livekit: { url: 'wss://lk', token: 'lk' } },
    }));
    const joined = await CallsClient.answerFromPush(ringToken, 'accept', {
      baseUrl: 'https://api.test/',
      roomId: 'room_1',
      fetch,
    });
    assert.deepEqual(joined.livekit, { url: 'wss://lk', token: 'lk' });
    const declined = await CallsClient.answerFromPush(ringToken, 'decline', {
      baseUrl: 'https://api.test',
      roomId: 'room_1',
      fetch,
    });
    assert.equal(declined.id, 'call_9');
    assert.deepEqual(
      requests.map((r) => [r.path, r.authorization]),
      [
        ['/chat/rooms/room_1/calls/call_9/accept', `Bearer ${ringToken}`],
        ['/chat/rooms/room_1/calls/call_9/decline', `Bearer ${ringToken}`],
      ],
    );
  });

  test('a token that is not a ring token is refused before any request', async () => {
    const { fetch, requests } = fakeFetch(() => ({}));
    await assert.rejects(
      CallsClient.answerFromPush('sk_nope', 'accept', { baseUrl: 'https://x', roomId: 'r', fetch }),
      { name: 'CallsError', status: 401, reason: 'UNAUTHENTICATED' },
    );
    assert.equal(requests.length, 0);
  });
});

describe('knockAsGuest', () => {
  const me = 'guest:gst_1';
  const token = `gt_${jwt({ sub: me, cid: 'call_1', exp: 2_000_000_000 })}`;
  /** Alice's group call with the guest Ann in the given state. */
  const withAnn = (state: string) =>
    call('call_1', 'active', [
      participant('alice', 'joined'),
      { userId: me, state, guest: true, name: 'Ann' },
    ]);
  const session = {
    guestId: 'gst_1',
    token,
    expiresAt: '2033-05-18T03:33:20Z',
    call: withAnn('waiting'),
  };

  test('knocks with the link token alone and gives the guest session', async () => {
    const { fetch, requests } = fakeFetch(() => ({ body: session }));
    const guest = await CallsClient.knockAsGuest('gl_lnk_secret', 'Ann', {
      baseUrl: 'https://api.test/',
      fetch,
    });
    assert.deepEqual(guest, session);
    assert.deepEqual(requests, [
      {
        method: 'POST',
        path: '/v1/guests',
        authorization: 'Bearer gl_lnk_secret',
        body: { name: 'Ann' },
      },
    ]);
  });

  test('a refused link is a CallsError with its reason', async () => {
    const { fetch } = fakeFetch(() => ({
      status: 401,
      body: {
        code: 16,
        message: 'this link is not valid',
        details: [{ '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: 'LINK_INVALID' }],
      },
    }));
    await assert.rejects(
      CallsClient.knockAsGuest('gl_gone', 'Ann', { baseUrl: 'https://api.test', fetch }),
      { name: 'CallsError', status: 401, reason: 'LINK_INVALID' },
    );
  });

  test('a client on the guest token: waiting, admitted, then accepted with that token', async () => {
    const { fetch, requests } = fakeFetch(() => ({
      body: { call: withAnn('joined'), livekit: { url: 'wss://lk', token: 'lk' } },
    }));
    let socket: FakeSocket | undefined;
    const io: Io = (_url, options) => {
      socket = new FakeSocket(options.auth as (cb: (data: object) => void) => void);
      return socket;
    };
    const client = new CallsClient({
      baseUrl: 'https://api.test',
      getSessionToken: () => token,
      fetch,
      io,
      clock: new FakeClock(),
    });
    clients.push(client);
    const states: string[] = [];
    client.callUpdated((c: Call) =>
      states.push(c.participants.find((p) => p.userId === me)!.state),
    );
    await settle();
    assert.ok(socket);
    assert.deepEqual(socket.attempts, [{ token }]);

    socket.emit('call.sync', { calls: [withAnn('waiting')] });
    const admitted = event('evt_1', 'call.admitted', withAnn('invited'), {
      recipientUserIds: [me],
      userIds: [me],
    });
    socket.emit('call.admitted', admitted);
    socket.emit('call.admitted', admitted); // a duplicate changes nothing
    assert.deepEqual(states, ['waiting', 'invited']);

    const joined = await client.acceptCall('room_1', 'call_1');
    assert.deepEqual(joined.livekit, { url: 'wss://lk', token: 'lk' });
    assert.deepEqual(
      requests.map((r) => [r.path, r.authorization]),
      [['/chat/rooms/room_1/calls/call_1/accept', `Bearer ${token}`]],
    );
    assert.deepEqual(states, ['waiting', 'invited', 'joined']);
  });
});
