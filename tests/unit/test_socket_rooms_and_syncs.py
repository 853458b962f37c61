"""The bridge's bookkeeping for 10,000s of sockets, in-process:

- `IndexedRooms` (services/socket_bridge/rooms.py) leaves python-socketio's rooms exactly
  as python-socketio's own manager does, without walking every room per disconnect;
- `SyncReads` (services/calls/queries.py) reads a lone call.sync at once and gathers the
  syncs that wait behind running reads into one read, each user getting its own calls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import socketio

from services.calls import queries
from services.calls.queries import SyncReads, User
from services.socket_bridge.rooms import IndexedRooms

NS = "/"


def _drive(manager: socketio.AsyncManager) -> None:
    """Connects, rooms and disconnects of three sockets, two of one user."""
    socketio.AsyncServer(client_manager=manager)  # the manager's server (ids, JSON)
    sockets = (("s1", "e1", "t:alice"), ("s2", "e2", "t:alice"), ("s3", "e3", "t:bob"))
    for sid, eio_sid, user_room in sockets:
        manager.basic_enter_room(sid, NS, None, eio_sid=eio_sid)
        manager.basic_enter_room(sid, NS, sid, eio_sid=eio_sid)
        manager.basic_enter_room(sid, NS, user_room)
    manager.basic_enter_room("s3", NS, "extra")
    manager.basic_leave_room("s3", NS, "extra")
    manager.pending_disconnect.setdefault(NS, []).append("s1")
    manager.basic_disconnect("s1", NS)
    manager.basic_disconnect("s3", NS)


def _rooms(manager: socketio.AsyncManager) -> dict[str, dict[Any, dict[str, str]]]:
    return {ns: {room: dict(m) for room, m in rooms.items()} for ns, rooms in manager.rooms.items()}


def test_indexed_rooms_leave_the_same_rooms_as_python_socketios_manager() -> None:
    stock, indexed = socketio.AsyncManager(), IndexedRooms()
    _drive(stock)
    _drive(indexed)
    assert (
        _rooms(indexed)
        == _rooms(stock)
        == {NS: {None: {"s2": "e2"}, "s2": {"s2": "e2"}, "t:alice": {"s2": "e2"}}}
    )
    assert indexed.pending_disconnect == stock.pending_disconnect == {}
    assert indexed.rooms_of == {(NS, "s2"): {None, "s2", "t:alice"}}
    indexed.basic_disconnect("s2", NS)
    assert indexed.rooms == {} and indexed.rooms_of == {}


class FakeReads:
    """Stands in for the database read: each read waits until released."""

    def __init__(self) -> None:
        self.reads: list[list[User]] = []
        self.release = asyncio.Event()
        self.fail = False

    async def __call__(self, engine: Any, users: list[User]) -> dict[User, list[dict[str, Any]]]:
        self.reads.append(list(users))
        await self.release.wait()
        if self.fail:
            raise RuntimeError("database away")
        return {u: [{"id": f"call-of-{u[0]}-{u[1]}"}] for u in users if u[1] != "nobody"}


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> FakeReads:
    fake = FakeReads()
    monkeypatch.setattr(queries, "calls_of_users", fake)
    return fake


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_lone_sync_is_read_at_once(reads: FakeReads) -> None:
    sizes: list[int] = []
    sync = SyncReads(engine=None, on_read=sizes.append)  # type: ignore[arg-type]
    task = asyncio.create_task(sync.live_calls("t1", "alice"))
    await _settle()
    assert reads.reads == [[("t1", "alice")]]
    reads.release.set()
    assert await task == [{"id": "call-of-t1-alice"}]
    assert sizes == [1]


async def test_syncs_waiting_behind_running_reads_go_together(reads: FakeReads) -> None:
    sync = SyncReads(engine=None, batch=3, concurrency=2)  # type: ignore[arg-type]
    users = [("t1", "a"), ("t2", "a"), ("t1", "b"), ("t1", "c"), ("t1", "d"), ("t1", "nobody")]
    first = [asyncio.create_task(sync.live_calls(*u)) for u in users[:2]]
    await _settle()
    later = [asyncio.create_task(sync.live_calls(*u)) for u in users[2:]]
    twice = asyncio.create_task(sync.live_calls("t1", "b"))  # a second device of t1:b
    await _settle()
    assert reads.reads == [[("t1", "a")], [("t2", "a")]]  # two running, the rest waiting
    reads.release.set()
    results = await asyncio.gather(*first, *later, twice)
    # The four waiting users (five syncs): a batch of three, then the fourth.
    assert reads.reads[2:] == [users[2:5], users[5:6]]
    assert results == [
        [{"id": "call-of-t1-a"}],
        [{"id": "call-of-t2-a"}],  # same user id, another tenant: its own calls
        [{"id": "call-of-t1-b"}],
        [{"id": "call-of-t1-c"}],
        [{"id": "call-of-t1-d"}],
        [],
        [{"id": "call-of-t1-b"}],
    ]


async def test_a_failed_read_fails_its_syncs_and_the_next_read_goes_on(reads: FakeReads) -> None:
    sync = SyncReads(engine=None, concurrency=1)  # type: ignore[arg-type]
    failing = asyncio.create_task(sync.live_calls("t1", "a"))
    await _settle()
    reads.fail = True
    reads.release.set()
    with pytest.raises(RuntimeError, match="database away"):
        await failing
    reads.fail = False
    assert await sync.live_calls("t1", "b") == [{"id": "call-of-t1-b"}]
