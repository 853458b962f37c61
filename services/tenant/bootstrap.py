"""Creates a tenant and prints its first API key as JSON: {"tenantId", "apiKey"}.

python -m services.tenant.bootstrap --name acme [--calls-disabled]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from services.common.db import create_engine, transaction, wait_for_database
from services.common.errors import ServiceError
from services.common.interceptors import Authenticator
from services.common.settings import load_settings
from services.tenant.repo import create_tenant


async def _check(saved: dict[str, str]) -> bool:
    """Whether a saved {tenantId, apiKey} still authenticates against this database."""
    settings = load_settings(SERVICE_NAME="bootstrap")
    engine = create_engine(settings)
    authenticator = Authenticator(engine, settings.SESSION_SIGNING_KEY)
    try:
        await wait_for_database(engine, settings.DB_WAIT_SECONDS)
        principal = await authenticator.authenticate({"x-api-key": saved.get("apiKey", "")})
    except ServiceError:
        return False
    finally:
        await authenticator.close()
        await engine.dispose()
    return principal is not None and principal.tenant_id == saved.get("tenantId")


async def _run(name: str, calls_enabled: bool) -> dict[str, str]:
    settings = load_settings(SERVICE_NAME="bootstrap")
    engine = create_engine(settings)
    try:
        await wait_for_database(engine, settings.DB_WAIT_SECONDS)
        async with transaction(engine) as conn:
            created = await create_tenant(conn, name=name, calls_enabled=calls_enabled)
    finally:
        await engine.dispose()
    return {"tenantId": created.tenant_id, "apiKey": created.api_key}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--name", help="display name of the tenant")
    group.add_argument("--check", help="exit 0 when this saved JSON still authenticates")
    parser.add_argument(
        "--calls-disabled",
        action="store_true",
        help="create with calls.enabled=false (the default is enabled)",
    )
    args = parser.parse_args(argv)
    if args.check is not None:
        sys.exit(0 if asyncio.run(_check(json.loads(args.check))) else 1)
    result = asyncio.run(_run(args.name, not args.calls_disabled))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
