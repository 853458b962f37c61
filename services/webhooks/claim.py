"""The dispatcher's claim: due deliveries leased fairly across tenants, in one statement
whose cost follows what it takes, not the size of the backlog or the table statistics.

The statement walks the tenants that have pending deliveries in tenant-id order, from
where this replica's previous claim stopped (a round robin), one index probe per tenant
(`ix_webhook_deliveries_tenant_due`: the next tenant id above the last); for each
tenant visited a LATERAL subquery takes its oldest due, unleased rows, at most what is
left of the tenant's share in this replica, from the same index in its order (LIMIT,
FOR UPDATE SKIP LOCKED, so replicas never take the same row). The walk is evaluated
lazily: it stops as soon as the claim is full, or after `steps` tenants. Nothing sorts,
hashes or scans more than it returns, so no statistics can make the planner multiply
the backlog by itself (the plan is in docs/decisions.md, "Webhook dispatcher").

Statistics still choose among plans for the same text: with a table analysed while
empty, PostgreSQL 18 served the walk's "next tenant" from the other pending index
(`ix_webhook_deliveries_due`, on next_attempt_at) plus a sort of every pending row, per
step. So the connections that claim run with the plan shapes this statement must never
take switched off (`PLAN_SHAPES`: sequential and bitmap scans, sorts, hash and merge
joins). Since PostgreSQL 18 a plan with fewer disabled nodes always wins, so the planner
is left with index scans in index order, nested loops and the recursive union,
whatever it estimates. The deliverer's pool serves only the deliverer; its other
statements (settle by primary key, the next retry by index) keep their plans.

The leased rows come back with the tenant's endpoint (URL and secret, read now so a
changed URL or a rotated secret applies to retries). A last row with a NULL id tells
where the walk stopped when it was not cut short by a full claim: the tenant at the
step limit (the next claim goes on after it) or NULL at the end of the tenants (the
next claim starts again from the first).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

# Session settings of a connection that claims (see above), set once per connection.
PLAN_SHAPES = """
SELECT set_config('enable_seqscan', 'off', false), set_config('enable_bitmapscan', 'off', false),
       set_config('enable_sort', 'off', false), set_config('enable_hashjoin', 'off', false),
       set_config('enable_mergejoin', 'off', false)"""

# The claim's parameters travel as arrays, so the text is fixed and psycopg prepares it.
CLAIM = """
WITH RECURSIVE walk(tenant_id, step) AS (
    SELECT (SELECT d.tenant_id FROM webhook_deliveries d
            WHERE d.status = 'pending' AND d.tenant_id > %(after)s
            ORDER BY d.tenant_id LIMIT 1), 1
  UNION ALL
    SELECT (SELECT d.tenant_id FROM webhook_deliveries d
            WHERE d.status = 'pending' AND d.tenant_id > w.tenant_id
            ORDER BY d.tenant_id LIMIT 1), w.step + 1
    FROM walk w WHERE w.tenant_id IS NOT NULL AND w.step < %(steps)s
),
picked AS (
    SELECT p.id, w.step
    FROM walk w CROSS JOIN LATERAL (
        SELECT d.id FROM webhook_deliveries d
        WHERE d.tenant_id = w.tenant_id AND d.status = 'pending'
          AND d.next_attempt_at <= now()
          AND (d.lease_until IS NULL OR d.lease_until < now())
        ORDER BY d.next_attempt_at
        LIMIT coalesce((SELECT b.n FROM unnest(%(busy)s::text[], %(left)s::int[]) AS b(tenant, n)
                        WHERE b.tenant = w.tenant_id), %(share)s)
        FOR UPDATE OF d SKIP LOCKED
    ) p
    LIMIT %(limit)s
),
leased AS (
    UPDATE webhook_deliveries d SET lease_until = now() + make_interval(secs => %(lease)s)
    FROM picked p WHERE d.id = p.id
    RETURNING d.id, d.tenant_id, d.event_id, d.event_type, d.body, d.attempts, d.created_at,
              d.replay_id <> '' AS chained, p.step
)
SELECT l.id, l.tenant_id, l.event_id, l.event_type, l.body, l.attempts, l.created_at,
       l.chained, l.step, e.url, e.secret
FROM leased l
LEFT JOIN LATERAL (SELECT url, secret FROM webhook_endpoints e WHERE e.tenant_id = l.tenant_id) e
  ON true
UNION ALL
SELECT NULL, w.tenant_id, NULL, NULL, NULL, NULL, NULL, NULL, w.step, NULL, NULL
FROM walk w
WHERE (SELECT count(*) FROM leased) < %(limit)s AND w.step = (SELECT max(step) FROM walk)"""


@dataclass(frozen=True)
class Claimed:
    """A leased delivery, with the tenant's endpoint as it is now (None: removed)."""

    id: str
    tenant_id: str
    event_id: str
    event_type: str
    body: str
    attempts: int
    created_at: datetime
    chained: bool  # part of a replay (its next event waits for this attempt)
    url: str | None
    secret: str | None


class FairClaim:
    """One replica's claims: the round robin's position and the per-tenant share."""

    def __init__(self, *, share: int, lease_seconds: float) -> None:
        self.share = share
        self.lease_seconds = lease_seconds
        self.after = ""  # tenant ids are never empty: "" is before every tenant
        self._shaped: weakref.WeakSet[psycopg.AsyncConnection[Any]] = weakref.WeakSet()

    def steps(self, limit: int) -> int:
        """How many tenants one claim may visit: enough to fill it from tenants with a
        full share each, and more to pass tenants whose rows are not due yet."""
        return max(64, 4 * limit)

    async def claim(
        self, conn: psycopg.AsyncConnection[Any], limit: int, in_flight: Mapping[str, int]
    ) -> list[Claimed]:
        """Leases at most `limit` due rows; `in_flight` counts this replica's requests per
        tenant (a tenant at its share is skipped, others get what is left of theirs)."""
        if conn not in self._shaped:
            await conn.execute(PLAN_SHAPES)
            self._shaped.add(conn)
        busy = list(in_flight)
        cur = await conn.execute(
            CLAIM,
            {
                "after": self.after,
                "steps": self.steps(limit),
                "busy": busy,
                "left": [max(0, self.share - in_flight[t]) for t in busy],
                "share": self.share,
                "limit": limit,
                "lease": self.lease_seconds,
            },
        )
        rows = await cur.fetchall()
        claimed: list[Claimed] = []
        last_step, last_tenant = 0, self.after
        for row in rows:
            id_, tenant, event_id, event_type, body, attempts, created_at, chained = row[:8]
            step, url, secret = row[8:]
            if id_ is None:  # where the walk stopped: a tenant at the step limit, or the end
                last_tenant = tenant or ""
                break
            claimed.append(
                Claimed(
                    id_,
                    tenant,
                    event_id,
                    event_type,
                    body,
                    attempts,
                    created_at,
                    chained,
                    url,
                    secret,
                )
            )
            if step >= last_step:
                last_step, last_tenant = step, tenant
        self.after = last_tenant
        return claimed
