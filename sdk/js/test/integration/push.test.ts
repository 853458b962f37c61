// Push to answer: the tenant's backend gets the ring token in the call.invite webhook and
// puts it in a VoIP push; the woken app answers with it before it has a session.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { CallsClient } from '../../src/index.js';
import { API, backend, Device, room, until } from './stack.js';

const deliveries: any[] = [];
const receiver = http.createServer((request, response) => {
  let body = '';
  request.on('data', (chunk) => (body += chunk));
  request.on('end', () => {
    deliveries.push(JSON.parse(body));
    response.end('ok');
  });
});
const devices: Device[] = [];

before(async () => {
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  const { port } = receiver.address() as AddressInfo;
  await backend('PUT', '/v1/tenant/webhook', {
    url: `http://127.0.0.1:${port}/hooks`,
    events: ['call.invite'],
  });
});
after(() => {
  devices.forEach((d) => d.close());
  receiver.close();
});

/** What the backend would put in the push: the ring token of `user` for the call. */
async function pushedRingToken(callId: string, user: string): Promise<string> {
  const invite = () => deliveries.find((d) => d.type === 'call.invite' && d.call.id === callId);
  await until(() => invite() !== undefined, `the call.invite webhook of ${callId}`);
  return invite().ring.tokens[user];
}

test(
  'accept from a push, with the ring token alone; then the session takes over',
  { timeout: 120_000 },
  async () => {
    const roomId = await room('alice', 'bob');
    const alice = await Device.online('alice');
    devices.push(alice);
    const { call } = await alice.client.startCall(roomId, { type: 'audio' });
    const ringToken = await pushedRingToken(call.id, 'bob');

    const joined = await CallsClient.answerFromPush(ringToken, 'accept', { baseUrl: API, roomId });
    assert.equal(joined.call.status, 'active');
    assert.ok(joined.livekit.url && joined.livekit.token);
    await alice.wait('callAccepted', call.id);

    // The app now has a session: its socket syncs the call it answered, and it keeps the
    // LiveKit credentials fresh from here on.
    const bob = await Device.online('bob');
    devices.push(bob);
    const refreshed = await bob.client.refreshToken(roomId, call.id);
    assert.ok(refreshed.livekit.token);
    assert.equal((await bob.client.getActiveCall(roomId))?.id, call.id);
    await bob.client.endCall(roomId, call.id);
    await alice.wait('callEnded', call.id);
  },
);

test(
  'decline from a push; the token answers nothing more, a forged one nothing at all',
  { timeout: 120_000 },
  async () => {
    const roomId = await room('alice', 'bob');
    const alice = await Device.online('alice');
    devices.push(alice);
    const { call } = await alice.client.startCall(roomId);
    const ringToken = await pushedRingToken(call.id, 'bob');

    const declined = await CallsClient.answerFromPush(ringToken, 'decline', {
      baseUrl: API,
      roomId,
    });
    assert.equal(declined.endReason, 'declined');
    const ended = await alice.wait('callEnded', call.id);
    assert.equal(ended.call.endReason, 'declined');

    const answer = (token: string) =>
      CallsClient.answerFromPush(token, 'accept', { baseUrl: API, roomId });
    await assert.rejects(answer(ringToken), {
      name: 'CallsError',
      status: 409,
      reason: 'CALL_ENDED',
    });
    const [header, , signature] = ringToken.split('.');
    const claims = Buffer.from(JSON.stringify({ sub: 'mallory', cid: call.id })).toString(
      'base64url',
    );
    await assert.rejects(answer(`${header}.${claims}.${signature}`), {
      name: 'CallsError',
      status: 401,
      reason: 'UNAUTHENTICATED',
    });
  },
);
