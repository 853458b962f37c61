// LiveKit credentials kept fresh: for each call this client joined, a new token is asked
// for a minute before the current one expires (600 s TTL), and handed to the app, which
// gives it to its LiveKit room (for the room's own reconnects).
import { Backoff } from './backoff.js';
import type { Clock } from './clock.js';
import { UNKNOWN, asCallsError, type CallsError } from './errors.js';
import { claims } from './jwt.js';
import type { CallJoined } from './types.js';

export const REFRESH_BEFORE_MS = 60_000;
const ASSUMED_TTL_MS = 600_000; // the API's LiveKit token TTL, if a token's exp is unreadable
// Refusals that another try cannot change: the call ended, the user left or was removed.
const FINAL_STATUSES = new Set([401, 403, 404, 409]);

interface Schedule {
  roomId: string;
  expiresAt: number; // epoch ms of the current token's expiry
  timer: unknown;
  backoff: Backoff;
}

export class TokenRefresher {
  private readonly schedules = new Map<string, Schedule>();

  constructor(
    private readonly refresh: (roomId: string, callId: string) => Promise<CallJoined>,
    private readonly onRefreshed: (joined: CallJoined) => void,
    private readonly onError: (err: CallsError) => void,
    private readonly clock: Clock,
  ) {}

  /** Credentials for a call this client joined: refresh them before they expire. */
  track({ call, livekit }: CallJoined): void {
    this.untrack(call.id);
    const exp = claims(livekit.token).exp;
    const expiresAt = typeof exp === 'number' ? exp * 1000 : this.clock.now() + ASSUMED_TTL_MS;
    const schedule: Schedule = {
      roomId: call.roomId,
      expiresAt,
      timer: undefined,
      backoff: new Backoff(),
    };
    this.schedules.set(call.id, schedule);
    this.arm(call.id, schedule, expiresAt - REFRESH_BEFORE_MS - this.clock.now());
  }

  untrack(callId: string): void {
    const schedule = this.schedules.get(callId);
    if (!schedule) return;
    this.clock.clearTimeout(schedule.timer);
    this.schedules.delete(callId);
  }

  stop(): void {
    for (const callId of [...this.schedules.keys()]) this.untrack(callId);
  }

  private arm(callId: string, schedule: Schedule, delayMs: number): void {
    schedule.timer = this.clock.setTimeout(
      () => {
        void this.run(callId, schedule);
      },
      Math.max(0, delayMs),
    );
  }

  private async run(callId: string, schedule: Schedule): Promise<void> {
    let joined: CallJoined;
    try {
      joined = await this.refresh(schedule.roomId, callId);
    } catch (err) {
      if (this.schedules.get(callId) !== schedule) return; // untracked meanwhile
      const error = asCallsError(err, UNKNOWN);
      const retryIn = schedule.backoff.next();
      if (FINAL_STATUSES.has(error.status) || this.clock.now() + retryIn >= schedule.expiresAt) {
        this.untrack(callId);
        this.onError(error);
      } else {
        this.arm(callId, schedule, retryIn);
      }
      return;
    }
    if (this.schedules.get(callId) !== schedule) return;
    this.track(joined);
    this.onRefreshed(joined);
  }
}
