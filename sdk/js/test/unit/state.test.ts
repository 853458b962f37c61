// The convergence rules of CallState, as bob (the callee of alice's 1:1 calls) sees them.
import assert from 'node:assert/strict';
import { beforeEach, describe, test } from 'node:test';
import type { Effect } from '../../src/events.js';
import { CallState } from '../../src/state.js';
import { answered, call, cancelled, event, participant, ringing } from './fakes.js';

const names = (effects: Effect[]) => effects.map((e) => e.name);
const fired = (effects: Effect[], name: Effect['name']) => effects.filter((e) => e.name === name);

let state: CallState;
beforeEach(() => {
  state = new CallState();
  state.setUser('bob');
  state.connecting();
  state.sync([]);
});

describe('rings', () => {
  test('an invite rings once; the same event again changes nothing', () => {
    const invite = event('evt_1', 'call.invite', ringing());
    assert.deepEqual(names(state.event(invite)), ['callUpdated', 'callInvite']);
    assert.equal(fired(state.event(invite), 'callInvite').length, 0);
    assert.deepEqual(state.event({ ...invite }), []);
  });

  test('a ring stops with the call.ring_stopped naming the user, and that event is handed over', () => {
    state.event(event('evt_1', 'call.invite', ringing()));
    // call.accepted comes first (another device of bob answered): bob's devices still ring
    // until the server says their ring stopped.
    const accepted = state.event(event('evt_2', 'call.accepted', answered()));
    assert.deepEqual(names(accepted), ['callUpdated', 'callAccepted']);
    const stop = event('evt_3', 'call.ring_stopped', answered(), {
      reason: 'accepted',
      userIds: ['bob'],
    });
    const stopped = state.event(stop);
    assert.deepEqual(names(stopped), ['callRingStopped']);
    assert.equal(stopped[0]?.value, stop);
  });

  test('a ring stops when the call ends, with the reason derived from the end', () => {
    state.event(event('evt_1', 'call.invite', ringing()));
    const ended = state.event(event('evt_2', 'call.ended', cancelled()));
    assert.deepEqual(names(ended), ['callUpdated', 'callRingStopped', 'callEnded']);
    const stop = fired(ended, 'callRingStopped')[0]?.value as { id: string; reason?: string };
    assert.equal(stop.id, '');
    assert.equal(stop.reason, 'cancelled');
    assert.equal(
      fired(state.event(event('evt_3', 'call.ended', cancelled())), 'callEnded').length,
      0,
    );
  });

  test("this client's own accept stops its ring at once; the server's events add no second stop", () => {
    state.event(event('evt_1', 'call.invite', ringing()));
    const replied = state.reply(answered());
    assert.deepEqual(names(replied), ['callUpdated', 'callRingStopped']);
    assert.equal((replied[1]?.value as { reason?: string }).reason, 'accepted');
    const stop = event('evt_2', 'call.ring_stopped', answered(), { userIds: ['bob'] });
    assert.deepEqual(state.event(stop), []);
  });

  test('the caller never rings for their own call', () => {
    state.setUser('alice');
    assert.deepEqual(names(state.event(event('evt_1', 'call.invite', ringing()))), ['callUpdated']);
  });

  test('a group ring that timed out stops as timeout; a new invite rings again', () => {
    const group = (bob: string) =>
      call('call_g', 'active', [participant('alice', 'joined'), participant('bob', bob)], {
        mode: 'group',
      });
    state.event(event('evt_1', 'call.invite', group('invited')));
    const missed = state.sync([group('missed')]);
    assert.deepEqual(names(missed), ['callUpdated', 'callRingStopped']);
    assert.equal((missed[1]?.value as { reason?: string }).reason, 'timeout');
    assert.deepEqual(names(state.event(event('evt_2', 'call.invite', group('invited')))), [
      'callUpdated',
      'callInvite',
    ]);
  });
});

describe('call.sync after a reconnect', () => {
  test('a ring that began while away rings once; the invite event held behind the sync adds nothing', () => {
    state.connecting();
    const synced = state.sync([ringing()]);
    assert.deepEqual(names(synced), ['callUpdated', 'callInvite']);
    assert.equal((synced[1]?.value as { id: string }).id, '');
    assert.deepEqual(state.event(event('evt_1', 'call.invite', ringing())), []);
  });

  test('a ringing call gone from the sync stops ringing and ends, once', () => {
    state.event(event('evt_1', 'call.invite', ringing()));
    state.connecting();
    const synced = state.sync([]);
    assert.deepEqual(names(synced), ['callUpdated', 'callRingStopped', 'callEnded']);
    assert.equal((synced[0]?.value as { status: string }).status, 'ended');
    // The call.ended the bridge held behind the sync: no second callEnded.
    assert.deepEqual(
      fired(state.event(event('evt_2', 'call.ended', cancelled())), 'callEnded'),
      [],
    );
    state.connecting();
    assert.deepEqual(state.sync([]), []);
  });

  test('a call answered on another device while away: accepted and ring stopped, once each', () => {
    state.event(event('evt_1', 'call.invite', ringing()));
    state.connecting();
    const synced = state.sync([answered()]);
    assert.deepEqual(names(synced), ['callUpdated', 'callRingStopped', 'callAccepted']);
    assert.equal((synced[1]?.value as { reason?: string }).reason, 'accepted');
    assert.deepEqual(names(state.event(event('evt_2', 'call.accepted', answered()))), []);
  });

  test('a call this client just started is not taken for over by a sync read before it', () => {
    state.setUser('alice');
    state.connecting();
    state.reply(ringing());
    assert.deepEqual(state.sync([]), []);
    state.connecting(); // the next connection's sync is read after the start: it counts
    assert.deepEqual(names(state.sync([])), ['callUpdated', 'callEnded']);
  });

  test('event ids seen before the reconnect stay seen', () => {
    const invite = event('evt_1', 'call.invite', ringing());
    state.event(invite);
    state.connecting();
    state.sync([ringing()]);
    assert.deepEqual(state.event(invite), []);
  });
});

describe('snapshots', () => {
  test('a status never goes back: a late reply cannot revive a ring or an ended call', () => {
    state.setUser('alice');
    state.event(event('evt_1', 'call.accepted', answered()));
    assert.deepEqual(state.reply(ringing()), []);
    state.event(event('evt_2', 'call.ended', cancelled()));
    assert.deepEqual(state.reply(answered()), []);
  });

  test('another user signing in starts afresh', () => {
    state.event(event('evt_1', 'call.invite', ringing()));
    state.setUser('carol');
    state.connecting();
    assert.deepEqual(state.sync([]), []);
  });

  test('knocks, declines and misses are handed over once per event id', () => {
    for (const [type, name] of [
      ['call.knock', 'callKnock'],
      ['call.declined', 'callDeclined'],
      ['call.missed', 'callMissed'],
    ] as const) {
      const e = event(`evt_${type}`, type, answered());
      assert.equal(fired(state.event(e), name).length, 1);
      assert.equal(fired(state.event(e), name).length, 0);
    }
  });
});
