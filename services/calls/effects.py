"""What a committed change does outside the database: one path for every caller (the
calls service's transitions and sweeps, LiveKit's webhooks, chat's member removal), so
metrics and LiveKit work never diverge.

All of it runs after commit and in the background: LiveKit is never called while a
transaction (and its row locks) is open, and a slow media server never delays a reply.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from services.calls import metrics, store
from services.calls.domain import Call, Change
from services.calls.media import Media
from services.common.errors import ServiceError
from services.common.logging import log_fields

log = logging.getLogger(__name__)

# Ended calls whose room deletion failed (or whose process died before it) are retried
# by `retry_room_deletions` once they ended this long ago.
RETRY_SETTLE_SECONDS = 10.0
# A kick (or a mute applied again) is sent at once and again after each of these pauses
# until LiveKit confirms (about 15 s in all; for a kick, reconciliation takes over then).
ENFORCE_RETRY_DELAYS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


class CallEffects:
    def __init__(self, media: Media, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        self.media = media
        self.pool = pool
        self._jobs: set[asyncio.Task[None]] = set()
        # Ended calls whose LiveKit room is to go (call id, room): only those LiveKit told
        # us of a room for (Change.delete_room). `delete_ended_rooms` deletes them in
        # batches. Durable all the same: the rows stay marked until done.
        self._ended_rooms: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def after_commit(self, before: Call | None, change: Change) -> None:
        """Counts a committed change and starts its LiveKit work (never awaited here).

        No media room is created when a call becomes active: LiveKit creates it at the
        first join, and a call nobody joins ends by its own no-media clock. Likewise only
        a call whose room LiveKit told us of has one to delete at its end."""
        metrics.count(before, change)
        call = change.call
        if change.delete_room:
            self._ended_rooms.put_nowait((call.id, call.livekit_room))
        room = call.livekit_room
        for user_id in change.kicked:
            self._spawn(
                self._confirmed("kick", partial(self.media.remove_participant, room, user_id))
            )
        for user_id in change.remuted:
            muted = partial(self._mute, room, user_id, call.muted(user_id))
            self._spawn(self._confirmed("mute", muted))

    async def _mute(self, livekit_room: str, user_id: str, muted: Sequence[str]) -> bool:
        try:
            await self.media.mute(livekit_room, user_id, muted)
        except ServiceError:  # LiveKit could not do it now (logged)
            return False
        return True

    async def _confirmed(self, what: str, attempt: Callable[[], Awaitable[bool]]) -> None:
        """The media room made to follow the call (a kick, a mute applied again), retried
        until LiveKit confirms (a process that dies first leaves a kick to
        reconciliation, which compares identities)."""
        for delay in ENFORCE_RETRY_DELAYS:
            await asyncio.sleep(delay)
            if await attempt():
                return
        log.warning("media enforcement not confirmed", extra=log_fields(what=what))

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(job)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def drain(self) -> None:
        if self._jobs:
            await asyncio.wait(self._jobs, timeout=5)

    async def delete_ended_rooms(self, batch: int = 50) -> None:
        """Deletes the LiveKit rooms of calls ended here, as they end (a background job):
        the deletions of a batch run together and are marked done in one statement."""
        while True:
            due = [await self._ended_rooms.get()]
            while len(due) < batch and not self._ended_rooms.empty():
                due.append(self._ended_rooms.get_nowait())
            gone = await asyncio.gather(*(self.media.delete_room(room, "ended") for _, room in due))
            cleaned = [call_id for (call_id, _), ok in zip(due, gone, strict=True) if ok]
            if cleaned:  # the rest stay pending for retry_room_deletions
                await self._mark_cleaned(cleaned)

    async def retry_room_deletions(self, limit: int = 20) -> None:
        """Deletes the rooms still pending (LiveKit was unreachable, or the process that
        ended the call died first) until LiveKit confirms. The rows are read without a
        lock and LiveKit is called outside any transaction; two replicas deleting one
        room is harmless."""
        async with self.pool.connection() as conn:
            pending = await store.pending_cleanups(conn, settle=RETRY_SETTLE_SECONDS, limit=limit)
        cleaned: list[str] = []
        for call_id, livekit_room in pending:
            if not await self.media.delete_room(livekit_room, "ended"):
                break  # LiveKit unreachable: try again on the next sweep
            cleaned.append(call_id)
        if cleaned:
            await self._mark_cleaned(cleaned)
            log.info("media rooms removed", extra=log_fields(count=len(cleaned)))

    async def _mark_cleaned(self, call_ids: list[str]) -> None:
        async with self.pool.connection() as conn:
            await store.mark_cleaned(conn, call_ids)
