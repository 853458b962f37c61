"""The webhook dispatcher process: gRPC health and metrics, intake and delivery loops."""

from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.server import ServiceParts, main
from services.common.settings import Settings
from services.webhooks.dispatcher import Dispatcher


async def build(settings: Settings, engine: AsyncEngine) -> ServiceParts:
    dispatcher = Dispatcher(settings, engine)
    return ServiceParts(
        registrations=[], background=[dispatcher.consume, dispatcher.run_deliveries]
    )


main("webhooks", build)
