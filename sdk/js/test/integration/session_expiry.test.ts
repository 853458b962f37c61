// Sessions that expire: the bridge closes the socket at expiry, the SDK asks the app for a
// fresh session token and reconnects, and the listeners registered at the start still hear.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Device, WAIT_MS, room, shortSession, until } from './stack.js';

const TTL_SECONDS = 4;
const devices: Device[] = [];
after(() => devices.forEach((d) => d.close()));

test('an expired session is renewed without losing listeners', { timeout: 120_000 }, async () => {
  const roomId = await room('alice', 'bob');
  const alice = await Device.online('alice');
  const bob = new Device('bob', () => shortSession('bob', TTL_SECONDS));
  devices.push(alice, bob);
  await until(() => bob.client.connected, "bob's socket");
  const started = Date.now();

  // Two expiries: each closes the socket; each time the SDK asks again and reconnects.
  const changes = () => bob.seen.filter((r) => r.name === 'connectionChanged').length;
  await until(() => changes() >= 5, 'two renewals', 3 * WAIT_MS);
  assert.ok(Date.now() - started > (TTL_SECONDS * 1000) / 2, 'closed at expiry, not at once');
  assert.ok(bob.sessions >= 3, `asked ${bob.sessions} times`);
  await until(() => bob.client.connected, "bob's socket after renewal");
  assert.deepEqual(
    bob.seen.filter((r) => r.name === 'backgroundError'),
    [],
    'a renewal is not an error',
  );

  // The listeners bob registered with his first session still hear, and REST works on.
  const { call } = await alice.client.startCall(roomId);
  await bob.wait('callInvite', call.id);
  const declined = await bob.client.declineCall(roomId, call.id);
  assert.equal(declined.endReason, 'declined');
  await alice.wait('callEnded', call.id);
});
