// A guest (no account in the tenant's app) with a call link: knockAsGuest, then a client on
// the guest session hears the call, is admitted (or denied) and accepts.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { CallsClient, type Call } from '../../src/index.js';
import { API, backend, Device, room, until } from './stack.js';

const devices: Device[] = [];
before(() => backend('PATCH', '/v1/tenant/settings', { calls: { guestsEnabled: true } }));
after(() => devices.forEach((d) => d.close()));

/** Alice's live group call and a link to it, as the tenant's backend would make it. */
async function callWithLink(): Promise<{ alice: Device; call: Call; link: string }> {
  const roomId = await room('alice', 'bob', 'carol');
  const alice = await Device.online('alice');
  devices.push(alice);
  const { call } = await alice.client.startCall(roomId, { type: 'audio' });
  const made = await backend('POST', `/chat/rooms/${roomId}/calls/${call.id}/links`, {});
  return { alice, call, link: made.token };
}

/** The guest's own client: the guest token is its session; its call's states in order. */
async function guestDevice(token: string, me: string) {
  const device = new Device(me, async () => token);
  devices.push(device);
  const states: string[] = [];
  device.client.callUpdated((c) => {
    const state = c.participants.find((p) => p.userId === me)?.state;
    if (state && states.at(-1) !== state) states.push(state);
  });
  await until(() => device.client.connected, `${me}'s socket`);
  return { device, states };
}

const lobby = (call: Call, guestId: string, verb: 'admit' | 'deny') =>
  backend(
    'POST',
    `/chat/rooms/${call.roomId}/calls/${call.id}/participants/${guestId}/${verb}`,
    {},
  );

test('knock, admitted, accept and leave with the guest session', { timeout: 120_000 }, async () => {
  const { alice, call, link } = await callWithLink();
  const guest = await CallsClient.knockAsGuest(link, 'Ann Example', { baseUrl: API });
  const me = `guest:${guest.guestId}`;
  assert.ok(guest.token.startsWith('gt_'));
  assert.ok(Date.parse(guest.expiresAt) > Date.now());
  assert.deepEqual(
    guest.call.participants.find((p) => p.userId === me),
    { userId: me, state: 'waiting', guest: true, name: 'Ann Example' },
  );
  const knock = await alice.wait('callKnock', call.id);
  assert.equal(knock.userId, me);

  const { device, states } = await guestDevice(guest.token, me);
  await lobby(call, guest.guestId, 'admit');
  await until(() => states.includes('invited'), 'the admit on the guest socket');
  const joined = await device.client.acceptCall(call.roomId, call.id);
  assert.ok(joined.livekit.url && joined.livekit.token);
  const left = await device.client.leaveCall(call.roomId, call.id);
  assert.equal(left.participants.find((p) => p.userId === me)?.state, 'left');
  assert.deepEqual(states, ['waiting', 'invited', 'joined', 'left']);
});

test('a denied guest hears it and cannot accept', { timeout: 120_000 }, async () => {
  const { call, link } = await callWithLink();
  const guest = await CallsClient.knockAsGuest(link, 'Mallory', { baseUrl: API });
  const me = `guest:${guest.guestId}`;
  const { device, states } = await guestDevice(guest.token, me);
  await lobby(call, guest.guestId, 'deny');
  await until(() => states.includes('removed'), 'the deny on the guest socket');
  await assert.rejects(device.client.acceptCall(call.roomId, call.id), {
    name: 'CallsError',
    status: 403,
    reason: 'REMOVED_FROM_CALL',
  });
  await assert.rejects(CallsClient.knockAsGuest('gl_nothing', 'Eve', { baseUrl: API }), {
    name: 'CallsError',
    status: 401,
    reason: 'LINK_INVALID',
  });
});
