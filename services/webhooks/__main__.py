"""`python -m services.webhooks`: the webhook dispatcher.

A worker with no RPCs of its own: the shared gRPC server gives it health checks (for
readiness probes; SERVING once started, NOT_SERVING on SIGTERM) and Prometheus metrics
on METRICS_PORT. Its work is three background loops, restarted if they fail: intake
(JetStream → webhook_deliveries), delivery (rows → signed POSTs) and retention
(finished deliveries older than RETENTION_SECONDS are deleted).
Env: GRPC_PORT, METRICS_PORT, DATABASE_URL, NATS_*, WEBHOOK_*, RETENTION_*.
"""

from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.server import ServiceParts, main
from services.common.settings import Settings
from services.events import retention
from services.webhooks.delivery import Deliverer
from services.webhooks.intake import Intake


async def build(settings: Settings, engine: AsyncEngine) -> ServiceParts:
    deliverer = Deliverer(settings)
    intake = Intake(settings, on_queued=deliverer.wakeup.set)

    async def prune() -> None:
        await retention.run(settings, engine, [retention.WEBHOOK_DELIVERIES])

    return ServiceParts(registrations=[], background=[intake.run, deliverer.run, prune])


main("webhooks", build)
