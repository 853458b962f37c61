"""python-socketio's room manager with each socket's rooms indexed.

Its `basic_disconnect` finds a leaving socket's rooms by testing every room of the
namespace: two rooms per socket here (its own and its user's), so at 10,000 sockets each
disconnect walked 20,000 rooms, and a reconnect storm of 10,000 sockets spent ~80 % of
the bridge's CPU there (bench/README.md, round 5). Here a disconnect leaves the rooms the
socket is known to be in. python-socketio is pinned in the lock files; the integration
tests drive connects, rooms and disconnects through it.
"""

from __future__ import annotations

from typing import Any

import socketio

Key = tuple[str, str]  # (namespace, sid)


class IndexedRooms(socketio.AsyncManager):
    def __init__(self) -> None:
        super().__init__()
        self.rooms_of: dict[Key, set[Any]] = {}  # the rooms (None: the namespace's) of a sid

    def basic_enter_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None = None
    ) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self.rooms_of.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self.rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self.rooms_of[(namespace, sid)]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """As python-socketio's, without walking every room."""
        if namespace not in self.rooms:
            return
        for room in list(self.rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            if sid in pending.get(namespace, ()):
                pending[namespace].remove(sid)
                if not pending[namespace]:
                    del pending[namespace]
