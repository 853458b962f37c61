"""`python -m services.events`: a relay-only replica (optional).

Every calls replica already runs the outbox relay; this process runs just the relay
(lanes, dead letters, outbox retention) for operators who want more publishing capacity
without more API replicas, or the relay isolated from the API. Health and metrics as
every service (GRPC_PORT, METRICS_PORT). Env: DATABASE_URL, NATS_*, OUTBOX_*, RETENTION_*.
"""

from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.server import ServiceParts, main
from services.common.settings import Settings
from services.events.relay import relay_jobs


async def build(settings: Settings, engine: AsyncEngine) -> ServiceParts:
    relay = relay_jobs(settings)
    return ServiceParts(registrations=[], background=relay.background, closers=[relay.close])


main("events", build)
