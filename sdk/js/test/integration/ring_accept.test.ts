// Ringing on several devices: an accept on one stops the others, every listener is called
// once per call, and the API's refusals arrive as CallsError.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { CallsError } from '../../src/index.js';
import { Device, room } from './stack.js';

const devices: Device[] = [];
after(() => devices.forEach((d) => d.close()));

test(
  'ring, accept on one device: the other stops ringing; each listener called once',
  { timeout: 120_000 },
  async () => {
    const roomId = await room('alice', 'bob');
    const [alice, bob1, bob2] = await Promise.all([
      Device.online('alice'),
      Device.online('bob'),
      Device.online('bob'),
    ]);
    devices.push(alice, bob1, bob2);

    const started = await alice.client.startCall(roomId, {
      type: 'audio',
      custom: { ticket: 'T-1' },
    });
    assert.equal(started.call.status, 'ringing');
    assert.ok(started.livekit?.url && started.livekit.token);
    const callId = started.call.id;
    for (const bob of [bob1, bob2]) {
      const invite = await bob.wait('callInvite', callId);
      assert.equal(invite.type, 'call.invite');
      assert.ok(invite.id, 'the server event itself');
      assert.deepEqual(invite.call.custom, { ticket: 'T-1' });
    }

    const joined = await bob1.client.acceptCall(roomId, callId);
    assert.equal(joined.call.status, 'active');
    assert.ok(joined.livekit.token);
    const stopped = await bob2.wait('callRingStopped', callId);
    assert.equal(stopped.type, 'call.ring_stopped');
    assert.equal(stopped.reason, 'accepted');
    assert.deepEqual(stopped.userIds, ['bob']);
    await bob1.wait('callRingStopped', callId);
    await alice.wait('callAccepted', callId);

    // Too late to decline on the other device: the API's refusal, as a CallsError.
    await assert.rejects(bob2.client.declineCall(roomId, callId), (err: unknown) => {
      assert.ok(err instanceof CallsError);
      assert.deepEqual([err.status, err.reason], [409, 'CALL_NOT_RINGING']);
      return true;
    });

    const ended = await alice.client.endCall(roomId, callId);
    assert.equal(ended.endReason, 'hangup');
    for (const device of [alice, bob1, bob2]) {
      const end = await device.wait('callEnded', callId);
      assert.equal(end.call.endReason, 'hangup');
    }
    // The end came last on every socket: everything before it is in, and nothing twice.
    for (const bob of [bob1, bob2]) {
      assert.equal(bob.of('callInvite', callId).length, 1, bob.name);
      assert.equal(bob.of('callRingStopped', callId).length, 1, bob.name);
      assert.equal(bob.of('callAccepted', callId).length, 1, bob.name);
      assert.equal(bob.of('callEnded', callId).length, 1, bob.name);
    }
    assert.equal(alice.of('callInvite', callId).length, 0);
    assert.equal(alice.of('callAccepted', callId).length, 1);
    assert.equal(alice.of('callEnded', callId).length, 1);
  },
);

test('a non-member is refused with the API reason', async () => {
  const roomId = await room('alice', 'bob');
  const carol = await Device.online('carol');
  devices.push(carol);
  await assert.rejects(carol.client.startCall(roomId), {
    name: 'CallsError',
    status: 403,
    reason: 'NOT_ROOM_MEMBER',
  });
  assert.equal(await carol.client.getActiveCall(await room('carol', 'dave')), undefined);
  assert.deepEqual(await carol.client.ringingCalls(), []);
});
