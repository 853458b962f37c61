"""Background sweeps of the calls service: ring deadlines, ghost calls, reconciliation
with LiveKit's rooms.

Every replica (and every worker process) runs them; `FOR UPDATE SKIP LOCKED` shares the
due rows out, so each expiry happens once, on whichever process is alive. LiveKit is
only called outside transactions (the deletion of ended calls' rooms, and its retries,
are `effects.CallEffects`'s).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from services.calls import domain, metrics, store
from services.calls.domain import Call, Change
from services.calls.media import Media, MediaSignal
from services.calls.transitions import CallTransitions
from services.common.logging import log_fields

log = logging.getLogger(__name__)


RECONCILE_LOCK = 727276
# DeleteRoom requests one reconciliation pass sends at most (at once): after an outage
# of our webhook intake there may be thousands, and LiveKit serves calls meanwhile.
STALE_ROOMS_PER_PASS = 50
# Media rooms whose participants one pass lists (ListParticipants) to compare identities.
IDENTITY_ROOMS_PER_PASS = 50


Rule = Callable[[Call, datetime], Change]

# The ring sweep's two kinds of deadline, read in one statement per tick.
RINGS: list[tuple[store.Due, Rule]] = [
    (store.DUE_RINGING, domain.expire),  # 1:1 rings end the call as missed (`timeout`)
    (store.DUE_INVITES, domain.ring_timeouts),  # group invitations stop ringing (`missed`)
]


async def _apply_due(
    calls: CallTransitions, sweeps: list[tuple[store.Due, Rule]], limit: int
) -> int:
    """Locks the calls each sweep query finds and applies its rule to each, one
    transaction per sweep.

    A transaction only when something is due: every process sweeps rings four times a
    second, and an empty sweep was three round trips (BEGIN, the locking read, COMMIT)
    per kind of deadline where one read without a transaction answers for all."""
    done = 0
    async with calls.pool.connection() as conn:
        flags = await store.which_due(conn, [due for due, _ in sweeps])
        for (due, rule), flag in zip(sweeps, flags, strict=True):
            if not flag:
                continue
            async with conn.transaction():
                now, found = await store.lock_due(conn, due, limit)
                changes = [(call, rule(call, now)) for call in found]
                for call, change in changes:
                    await calls.save(conn, call, change, now)
            for call, change in changes:
                calls.effects.after_commit(call, change)
            done += len(changes)
    return done


async def stop_rings(calls: CallTransitions, limit: int = 50) -> int:
    """Every ring past its deadline: 1:1 calls end, group invitations are missed."""
    return await _apply_due(calls, RINGS, limit)


async def end_silent_calls(calls: CallTransitions, limit: int = 50) -> int:
    """Ends live calls nobody has been in the media room of for the grace (`no_media`)."""
    return await _apply_due(calls, [(store.DUE_NO_MEDIA, domain.no_media)], limit)


async def reconcile_media(calls: CallTransitions, media: Media, limit: int = 1000) -> None:
    """Checks active calls against LiveKit's rooms, because webhooks get lost: an empty
    (or missing) media room starts the no-media clock, an occupied one stops it (and
    marks the room for deletion at the call's end); someone in a room who is not joined
    in its call is taken out (`check_identities`); a room of ours that no live call has
    (its call ended, its join webhook lost) is deleted. One process at a time; nothing
    changes while LiveKit cannot answer."""
    async with calls.transaction() as conn:
        for status, n in (await store.live_counts(conn)).items():
            metrics.LIVE.labels(status).set(n)
    occupied = await media.occupied_rooms()
    if occupied is None:
        return
    grace = calls.media_grace
    async with calls.transaction() as conn:
        if not await store.try_lock(conn, RECONCILE_LOCK):
            return
        now, active = await store.lock_due(conn, store.ACTIVE, limit)
        changes = [
            (call, domain.media_occupancy(call, occupied.get(call.livekit_room, 0) > 0, grace, now))
            for call in active
        ]
        for call, change in changes:
            await calls.save(conn, call, change, now)
        ours = [name for name in occupied if domain.is_call_room(name)]
        live = await store.live_media_rooms(conn, ours) if ours else set()
    # After commit, like all LiveKit work (and counted like every other change); a room
    # that survives this is listed next time.
    for call, change in changes:
        calls.effects.after_commit(call, change)
    stale = domain.rooms_without_live_call(occupied, live, STALE_ROOMS_PER_PASS)
    if stale:
        await asyncio.gather(*(media.delete_room(name, "stale") for name in stale))
        log.info("stale media rooms removed", extra=log_fields(count=len(stale)))
    await check_identities(calls, media, active, occupied)


async def check_identities(
    calls: CallTransitions, media: Media, active: list[Call], occupied: dict[str, int]
) -> None:
    """Who is in each media room, against who is joined in its call, for the rooms where
    that can differ: a participant who was given a token and is no longer joined, or more
    people in the room than joined. Each identity found that is not joined is decided
    again under the call's lock, as LiveKit's join webhook would be (it may have joined
    meanwhile), and taken out after commit. At most IDENTITY_ROOMS_PER_PASS rooms a pass,
    listed at once."""
    suspect = [
        call
        for call in active
        if occupied.get(call.livekit_room, 0) > 0
        and (domain.may_return(call) or occupied[call.livekit_room] > len(call.joined()))
    ][:IDENTITY_ROOMS_PER_PASS]
    present = await asyncio.gather(*(media.present(call.livekit_room) for call in suspect))
    for call, identities in zip(suspect, present, strict=True):
        for identity in domain.media_intruders(call, identities or ()):
            await calls.media_signal(MediaSignal(call.livekit_room, "joined", identity))


async def every(seconds: float, job: Callable[[], Awaitable[object]]) -> None:
    while True:
        await job()
        await asyncio.sleep(seconds)
