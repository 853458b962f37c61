"""A local LiveKit server (built by `make livekit`), configured for loopback."""

from __future__ import annotations

import json
import os
import time
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
    """`make dev`'s LiveKit process: the server when built, else a note that media is off."""
    path = binary()
    if path is None:
        print(
            json.dumps(
                {
                    "severity": "WARNING",
                    "service": "livekit",
                    "message": "livekit-server not built "
                    "(needs Go: make livekit): media is off; signaling still works",
                }
            ),
            flush=True,
        )
        while True:  # stay up: the process runner stops everything when one process exits
            time.sleep(3600)
    cfg = ROOT / ".dev" / "livekit.yaml"
    cfg.write_text(
        config(
            port=int(os.environ.get("LIVEKIT_PORT", "7880")),
            webhook_url=os.environ.get(
                "LIVEKIT_WEBHOOK_URL", "http://127.0.0.1:8080/livekit/webhook"
            ),
            api_key=os.environ.get("LIVEKIT_API_KEY", "devkey"),
            api_secret=os.environ.get("LIVEKIT_API_SECRET"),
            departure_timeout=20,
        )
    )
    os.execv(str(path), command(path, cfg))


if __name__ == "__main__":
    main()
