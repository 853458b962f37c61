// The client's view of its user's calls, converged from three sources: socket events,
// `call.sync` (the live calls, first on every connect) and the replies to this client's
// own requests. Pure logic: each input returns the listener calls it causes (effects),
// and the client makes them. The rules (docs/decisions.md, "Client SDK"):
// - an event id is handled once;
// - a call's status never goes back (ringing < active < ended): an older snapshot that
//   arrives late (a reply overtaken by an event) changes nothing;
// - a ring starts with a `call.invite` or a sync showing the user `invited`, and stops
//   with a `call.ring_stopped` naming the user, a sync or reply showing them no longer
//   invited, or the call's end: `callInvite` and `callRingStopped` come once per ring;
// - `callEnded` and `callAccepted` come once per call; a call the sync no longer lists is
//   over for this user, and when its end happened while the socket was away, the SDK
//   derives the events the user missed (an event with an empty `id`).
import { EVENT, type Effect } from './events.js';
import type { Call, CallEvent, WireCallEvent } from './types.js';

const SEEN_IDS_KEPT = 1000; // event ids remembered for de-duplication
const ENDED_KEPT = 200; // ended calls remembered, so that a late event cannot revive them

const STATUS_RANK: Record<string, number> = { ringing: 0, active: 1, ended: 2 };
// Why a ring stopped, derived when the SDK did not see the call.ring_stopped itself (the
// server's own rules, docs/api.md "Ringing").
const RING_STOP_FOR_END: Record<string, string> = {
  declined: 'declined',
  cancelled: 'cancelled',
  no_answer: 'cancelled',
  timeout: 'timeout',
  busy: 'busy',
};
const RING_STOP_FOR_STATE: Record<string, string> = {
  joined: 'accepted',
  declined: 'declined',
  missed: 'timeout',
};

interface Tracked {
  call: Call;
  ringing: boolean;
  endedAnnounced: boolean;
  acceptedAnnounced: boolean;
}

type Source = { kind: 'event'; event: CallEvent } | { kind: 'sync' } | { kind: 'reply' };

const rank = (call: Call): number => STATUS_RANK[call.status] ?? 0;

export class CallState {
  private user: string | undefined;
  private readonly calls = new Map<string, Tracked>();
  private readonly seen = new Set<string>();
  // Calls a reply updated since the current connection attempt began: the coming sync
  // may have been read before that reply's change, so it cannot tell they are over.
  private repliedSinceConnect = new Set<string>();

  /** The signed-in user (a session token's subject); another user starts afresh. */
  setUser(userId: string | undefined): void {
    if (userId === this.user) return;
    this.user = userId;
    this.calls.clear();
    this.seen.clear();
    this.repliedSinceConnect.clear();
  }

  /** A connection attempt begins: its sync is read from now on. */
  connecting(): void {
    this.repliedSinceConnect = new Set();
  }

  /** `call.sync`: the user's live calls. Whatever else was live is over for this user. */
  sync(calls: Call[]): Effect[] {
    const effects: Effect[] = [];
    const listed = new Set(calls.map((c) => c.id));
    for (const call of calls) effects.push(...this.apply(call, { kind: 'sync' }));
    for (const [id, tracked] of this.calls) {
      if (listed.has(id) || this.repliedSinceConnect.has(id)) continue;
      if (tracked.call.status !== 'ended') {
        tracked.call = { ...tracked.call, status: 'ended' };
        effects.push({ name: 'callUpdated', value: tracked.call });
      }
      if (tracked.ringing) {
        tracked.ringing = false;
        const event = this.derived(EVENT.ringStopped, tracked.call, 'ended');
        effects.push({ name: 'callRingStopped', value: event });
      }
      if (!tracked.endedAnnounced) {
        tracked.endedAnnounced = true;
        effects.push({ name: 'callEnded', value: this.derived(EVENT.ended, tracked.call) });
      }
    }
    this.forgetEnded();
    return effects;
  }

  /** A call event from the socket (one without its call concerns no call: ignored). */
  event(wire: WireCallEvent): Effect[] {
    if (!wire.call) return [];
    const event = wire as CallEvent;
    if (event.id) {
      if (this.seen.has(event.id)) return [];
      this.remember(event.id);
    }
    const effects = this.apply(event.call, { kind: 'event', event });
    const tracked = this.calls.get(event.call.id);
    switch (event.type) {
      case EVENT.accepted: // a 1:1 call is answered once (a group join is participant_joined)
        if (tracked?.acceptedAnnounced) break;
        if (tracked) tracked.acceptedAnnounced = true;
        effects.push({ name: 'callAccepted', value: event });
        break;
      case EVENT.ended:
        if (tracked?.endedAnnounced) break;
        if (tracked) tracked.endedAnnounced = true;
        effects.push({ name: 'callEnded', value: event });
        break;
      case EVENT.declined:
        effects.push({ name: 'callDeclined', value: event });
        break;
      case EVENT.missed:
        effects.push({ name: 'callMissed', value: event });
        break;
      case EVENT.knock:
        effects.push({ name: 'callKnock', value: event });
        break;
    }
    this.forgetEnded();
    return effects;
  }

  /** The call in a reply to this client's own request. */
  reply(call: Call): Effect[] {
    this.repliedSinceConnect.add(call.id);
    return this.apply(call, { kind: 'reply' });
  }

  /** Whether this user is joined in the call, as the SDK last saw it. */
  joined(callId: string): boolean {
    const call = this.calls.get(callId)?.call;
    return call !== undefined && call.status !== 'ended' && this.mine(call)?.state === 'joined';
  }

  private apply(next: Call, source: Source): Effect[] {
    const effects: Effect[] = [];
    let tracked = this.calls.get(next.id);
    if (tracked && rank(next) < rank(tracked.call)) return effects; // an older snapshot
    const before = tracked?.call.status;
    if (!tracked) {
      tracked = { call: next, ringing: false, endedAnnounced: false, acceptedAnnounced: false };
      this.calls.set(next.id, tracked);
      effects.push({ name: 'callUpdated', value: next });
    } else if (JSON.stringify(tracked.call) !== JSON.stringify(next)) {
      tracked.call = next;
      effects.push({ name: 'callUpdated', value: next });
    }

    const event = source.kind === 'event' ? source.event : undefined;
    const stoppedByEvent =
      event?.type === EVENT.ringStopped && this.user !== undefined
        ? event.userIds.includes(this.user)
        : false;
    const rings = this.rings(next) && !stoppedByEvent;
    const mayStart = source.kind === 'sync' || event?.type === EVENT.invite;
    const mayStop = source.kind !== 'event' || stoppedByEvent || next.status === 'ended';
    if (!tracked.ringing && rings && mayStart) {
      tracked.ringing = true;
      effects.push({ name: 'callInvite', value: event ?? this.derived(EVENT.invite, next) });
    } else if (tracked.ringing && !rings && mayStop) {
      tracked.ringing = false;
      const stopped =
        event && stoppedByEvent
          ? event
          : this.derived(EVENT.ringStopped, next, this.ringStopReason(next));
      effects.push({ name: 'callRingStopped', value: stopped });
    }

    // Answered while the socket was away: the call.accepted this user missed.
    if (source.kind === 'sync' && before === 'ringing' && next.status === 'active') {
      if (!tracked.acceptedAnnounced) {
        tracked.acceptedAnnounced = true;
        effects.push({ name: 'callAccepted', value: this.derived(EVENT.accepted, next) });
      }
    }
    return effects;
  }

  private mine(call: Call) {
    return call.participants.find((p) => p.userId === this.user);
  }

  private rings(call: Call): boolean {
    return (
      call.status !== 'ended' &&
      call.createdBy !== this.user &&
      this.mine(call)?.state === 'invited'
    );
  }

  private ringStopReason(call: Call): string {
    if (call.status === 'ended') return RING_STOP_FOR_END[call.endReason ?? ''] ?? 'ended';
    return RING_STOP_FOR_STATE[this.mine(call)?.state ?? ''] ?? 'ended';
  }

  /** An event the SDK derived from a sync or a reply (it has no id: the server's own
   * event happened while this client could not hear it). */
  private derived(type: string, call: Call, reason?: string): CallEvent {
    const me = this.user === undefined ? [] : [this.user];
    return {
      id: '',
      type,
      tenantId: '',
      userId: '',
      call,
      recipientUserIds: me,
      userIds: type === EVENT.ringStopped ? me : [],
      reason,
    };
  }

  private remember(id: string): void {
    this.seen.add(id);
    if (this.seen.size > SEEN_IDS_KEPT) {
      const oldest = this.seen.values().next().value;
      if (oldest !== undefined) this.seen.delete(oldest);
    }
  }

  private forgetEnded(): void {
    let ended = 0;
    for (const tracked of this.calls.values()) if (tracked.endedAnnounced) ended += 1;
    for (const [id, tracked] of this.calls) {
      if (ended <= ENDED_KEPT) break;
      if (tracked.endedAnnounced) {
        this.calls.delete(id);
        ended -= 1;
      }
    }
  }
}
