// A device whose network goes away during a ring: when it is back, call.sync brings it up
// to date, and no listener is lost or called twice.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Device, Proxy, room, until } from './stack.js';

const devices: Device[] = [];
let proxy: Proxy | undefined;
after(async () => {
  devices.forEach((d) => d.close());
  await proxy?.close();
});

test(
  'a ring that began and ended while the device was offline converges',
  { timeout: 120_000 },
  async () => {
    const roomId = await room('alice', 'bob');
    proxy = await Proxy.start();
    const net = proxy;
    const alice = await Device.online('alice');
    const bob = await Device.online('bob', net.url);
    devices.push(alice, bob);

    // Offline: alice calls; the invite cannot reach bob.
    net.cut();
    await until(() => !bob.client.connected, "bob's socket to drop");
    await assert.rejects(bob.client.ringingCalls(), { status: 0, reason: 'NETWORK_ERROR' });
    const { call } = await alice.client.startCall(roomId, { type: 'video' });
    net.restore();

    // Back online: the sync shows the ring, which the SDK hands over as an invite.
    const invite = await bob.wait('callInvite', call.id);
    assert.equal(invite.id, '', 'derived from call.sync: the invite itself was missed');
    assert.equal(invite.call.status, 'ringing');
    assert.deepEqual(
      (await bob.client.ringingCalls()).map((c) => c.id),
      [call.id],
    );

    // Offline again: alice gives up.
    net.cut();
    await until(() => !bob.client.connected, "bob's socket to drop again");
    await alice.client.endCall(roomId, call.id, { reason: 'cancelled' });
    net.restore();

    const stopped = await bob.wait('callRingStopped', call.id);
    assert.equal(stopped.call.id, call.id);
    await bob.wait('callEnded', call.id);
    await until(() => bob.client.connected, "bob's socket back");

    // A second call, online all along, to mark the end of everything about the first.
    const second = await alice.client.startCall(roomId);
    await bob.wait('callInvite', second.call.id);
    await alice.client.endCall(roomId, second.call.id, { reason: 'cancelled' });
    await bob.wait('callEnded', second.call.id);
    for (const name of ['callInvite', 'callRingStopped', 'callEnded'] as const) {
      assert.equal(bob.of(name, call.id).length, 1, name);
      assert.equal(bob.of(name, second.call.id).length, 1, name);
    }
    const changes = bob.seen.filter((r) => r.name === 'connectionChanged').map((r) => r.value);
    assert.deepEqual(changes, [true, false, true, false, true]);
  },
);
