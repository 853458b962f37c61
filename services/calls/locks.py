"""The call path's lock order, in one place.

Every transaction of the call path takes its locks in this order and never the other
way round, so no two of them can wait for each other:

1. **The caller's room membership row**, `FOR SHARE` (a start: `store.START_CONTEXT`), or
   deleted (chat's RemoveMember, which then goes on to 2 through
   `membership.leave_live_call`). A start therefore runs before or after a removal of
   its caller, never across it.
2. **The call's row**, `FOR UPDATE` (every transition of an existing call:
   `store.LOCK_CALL`, `store.LOCK_LIVE_CALL`; the sweeps with `SKIP LOCKED`). A new
   call's row is its insert; a start that loses the room's live-call slot to another
   insert waits for that insert's transaction to end.
3. **User locks**: transaction-scoped advisory locks `(USER_LOCK_CLASS, key)`, one per
   user, taken in ascending key order (`user_keys`) by the statement that writes a
   change making users `joined` (`store.WRITE`), or by a 1:1 start under the busy
   policy "reject" before it checks whether the callee is joined elsewhere
   (`store.LOCK_USERS`).

A guest's knock takes a call link's row first (`store.REDEEM_LINK`: one use of the link,
counted atomically), then the call's row (2). Nothing takes a link's row while holding a
call's: making a link inserts a new row, revoking one locks only that row.

The one exception to "row before user locks" is that busy start: it takes its users'
locks (3) before it knows whether it will insert a call or join the room's live one (2).
So it never waits for a call's row lock while holding user locks: when its insert loses
the room's live-call slot, it rolls back and starts over (`transitions.CallTransitions
.start`), and the retry joins the live call row lock first. A call row's holder may
wait for a user lock (3 after 2); a user lock's holder never waits for a call row.

Why user locks at all: "is this user joined in another call?" (the busy check) and "this
user becomes joined" must not interleave. Whoever makes a user joined holds the user's
lock until commit; the busy check takes the lock before it looks, in a statement of its
own, so it sees every join that held the lock before it.

`tests/integration/test_lock_order.py` runs transitions that take the same locks in
pairs, many times at once, and fails on a deadlock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

# The advisory lock class of user locks (two-int keys), apart from the single-key locks
# of the sweeps and the relay.
USER_LOCK_CLASS = 7272


def user_key(tenant_id: str, user_id: str) -> int:
    """A user's lock key: 32 bits of a hash of tenant and user (a collision only makes
    two users wait for each other, never lets a check miss a join)."""
    digest = hashlib.blake2b(f"{tenant_id}/{user_id}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def user_keys(tenant_id: str, users: Iterable[str]) -> list[int]:
    """The lock keys of some users, in the order they are taken: ascending, each once."""
    return sorted({user_key(tenant_id, user) for user in users})
