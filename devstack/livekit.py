"""A local LiveKit server (built by `make livekit`), configured for loopback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from devstack.procs import ROOT, free_port

BINARY = ROOT / ".cache" / "bin" / "livekit-server"


def binary() -> Path | None:
    path = Path(os.environ.get("LIVEKIT_SERVER_BIN", BINARY))
    return path if path.is_file() and os.access(path, os.X_OK) else None


def config(
    *,
    port: int,
    webhook_url: str,
    api_key: str = "devkey",
    api_secret: str | None = None,
    departure_timeout: int = 5,
) -> str:
    """LiveKit's YAML config (JSON is valid YAML): loopback only, webhooks to our intake."""
    from services.common.settings import DEV_LIVEKIT_SECRET

    return json.dumps(
        {
            "port": port,
            "bind_addresses": ["127.0.0.1"],
            "rtc": {
                "tcp_port": free_port(),
                "udp_port": free_port(),
                "use_external_ip": False,
                "node_ip": "127.0.0.1",
            },
            "keys": {api_key: api_secret or DEV_LIVEKIT_SECRET},
            "webhook": {"api_key": api_key, "urls": [webhook_url]},
            "room": {"empty_timeout": 30, "departure_timeout": departure_timeout},
            "logging": {"level": "warn", "json": True},
        },
        indent=2,
    )


def command(binary_path: Path, config_path: Path) -> list[str]:
    return [str(binary_path), "--config", str(config_path)]


def main() -> None:
    """`make dev`'s LiveKit process (devstack/dev.py runs it only when the binary exists)."""
    parser = argparse.ArgumentParser(description="LiveKit for make dev")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--webhook-url", required=True)
    parser.add_argument("--config", type=Path, required=True, help="where to write its config")
    args = parser.parse_args()
    path = binary()
    if path is None:
        sys.exit("livekit-server not built (needs Go: make livekit)")
    args.config.write_text(
        config(
            port=args.port,
            webhook_url=args.webhook_url,
            api_key=os.environ.get("LIVEKIT_API_KEY", "devkey"),
            api_secret=os.environ.get("LIVEKIT_API_SECRET"),
            departure_timeout=20,
        )
    )
    os.execv(str(path), command(path, args.config))


if __name__ == "__main__":
    main()
