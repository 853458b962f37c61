"""Webhook targets must be public addresses: checked at PUT and pinned at every delivery.

A tenant's URL is fetched from our network position, so a URL naming loopback (Envoy's
admin), link-local (cloud metadata), private or unique-local (in-cluster services)
addresses is refused, unless WEBHOOK_ALLOW_PRIVATE_TARGETS=true (local development).

Delivery resolves the name through `PinnedResolver`, which vets every address it
returns; aiohttp connects to exactly those addresses, so a name that resolves to a
public address at the check and to 127.0.0.1 a moment later (DNS rebinding) never gets
a connection to 127.0.0.1. Hosts aiohttp takes for IP literals skip its resolver, so
`check_literal` vets them before the request.

One parser: the check and the connection read the host from the same `yarl.URL`
(`target`), the object aiohttp itself is handed. yarl normalises hosts (IDNA with NFKC:
fullwidth digits, ideographic dots, case), so a host another parser would keep as an
odd name (127.0.0.1 in fullwidth digits, U+FF11 U+FF12 U+FF17 ..., which aiohttp
connects to as 127.0.0.1) is checked as the address it becomes.

What a refusal says is fixed (`REFUSED`): neither the addresses a name resolved to, nor
whether it resolved at all, so the error cannot be used to map internal DNS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.helpers import is_ip_address
from aiohttp.resolver import ThreadedResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
RESOLVE_TIMEOUT_SECONDS = 3.0
# The one thing a refusal says, whatever the reason.
REFUSED = "must be a URL whose host is a public address or resolves only to public addresses"


class TargetNotAllowed(Exception):
    """The URL's host is, or resolves to, an address we do not send webhooks to (or does
    not resolve). Its text is REFUSED, whatever the reason: never an address or a name."""

    def __init__(self) -> None:
        super().__init__(REFUSED)


def target(url: str) -> URL:
    """The URL as delivery connects to it (aiohttp is handed this very object); raises
    ValueError for a URL yarl cannot parse."""
    parsed = URL(url)
    if not parsed.absolute or parsed.raw_host is None:
        raise ValueError("not an absolute URL")
    return parsed


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries to the same host (mapped, 6to4, NAT64, Teredo)."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def non_public(addr: IPAddress) -> str | None:
    """Why `addr` is not a public unicast address, or None when it is."""
    if isinstance(addr, ipaddress.IPv6Address) and (inner := _embedded_ipv4(addr)) is not None:
        return non_public(inner)
    for kind, hit in (
        ("unspecified", addr.is_unspecified),
        ("loopback", addr.is_loopback),
        ("link-local", addr.is_link_local),
        ("multicast", addr.is_multicast),
        ("private", addr.is_private),
        ("reserved", addr.is_reserved),
        ("not public", not addr.is_global),
    ):
        if hit:
            return kind
    return None


def _vet(host: str, addresses: list[str]) -> None:
    if not addresses:
        raise TargetNotAllowed()
    for text in addresses:
        if non_public(ipaddress.ip_address(text.split("%", 1)[0])) is not None:
            raise TargetNotAllowed()


def check_literal(host: str) -> bool:
    """Vets a host aiohttp connects to without its resolver; True when it was such a host.
    `host` is `target(url).raw_host`, as aiohttp reads it.

    aiohttp takes any all-digits-and-dots host for an IP address; the C library would
    read "2130706433" or "127.1" as 127.0.0.1, so only the canonical forms pass.
    """
    if not is_ip_address(host):
        return False
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise TargetNotAllowed() from None
    _vet(host, [str(addr)])
    return True


class PinnedResolver(AbstractResolver):
    """Resolves like aiohttp's default, and refuses when any address is not public."""

    def __init__(self, upstream: AbstractResolver | None = None) -> None:
        self.upstream = upstream or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.upstream.resolve(host, port, family)
        _vet(host, [r["host"] for r in results])
        return results

    async def close(self) -> None:
        await self.upstream.close()


async def check_url(url: str, resolver: AbstractResolver | None = None) -> None:
    """The check at PUT: the URL's host as delivery would reach it today."""
    try:
        parts = target(url)
    except ValueError:
        raise TargetNotAllowed() from None
    host = parts.raw_host or ""
    if check_literal(host):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    guard = PinnedResolver(resolver)
    try:
        await asyncio.wait_for(guard.resolve(host, port, socket.AF_UNSPEC), RESOLVE_TIMEOUT_SECONDS)
    except (OSError, TimeoutError):
        raise TargetNotAllowed() from None
    finally:
        await guard.close()
