"""The webhook SSRF guard: which addresses are refused, and that delivery connects only to
addresses the guard vetted at connect time (no DNS rebinding)."""

from __future__ import annotations

import ipaddress
import socket

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from services.webhooks import ssrf_guard

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("100.64.0.1", "not public"),  # carrier-grade NAT
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "private"),  # unique local
    ("fe80::1", "link-local"),
    ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
]


@pytest.mark.parametrize(("address", "kind"), REFUSED)
def test_non_public_addresses_are_named(address: str, kind: str) -> None:
    assert ssrf_guard.non_public(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert ssrf_guard.non_public(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "169.254.169.254", "::1", "2130706433", "127.1"])
def test_literal_hosts_that_reach_private_addresses_are_refused(host: str) -> None:
    with pytest.raises(ssrf_guard.TargetNotAllowed):
        ssrf_guard.check_literal(host)


def test_names_are_left_to_the_resolver_and_public_literals_pass() -> None:
    assert ssrf_guard.check_literal("hooks.example.com") is False
    assert ssrf_guard.check_literal("8.8.8.8") is True


class FakeResolver(AbstractResolver):
    """DNS under the test's control: host -> addresses, changeable between lookups."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups += 1
        if host not in self.table:
            raise OSError("no such host")
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0, flags=0)
            for a in self.table[host]
        ]

    async def close(self) -> None:
        return None


async def test_put_check_refuses_names_resolving_to_private_addresses() -> None:
    dns = FakeResolver(
        {
            "ok.test": ["8.8.8.8"],
            "mixed.test": ["8.8.8.8", "10.0.0.5"],
            "meta.test": ["169.254.169.254"],
        }
    )
    await ssrf_guard.check_url("https://ok.test/hooks", dns)
    for url in ("http://mixed.test/", "http://meta.test:8080/x", "http://absent.test/"):
        with pytest.raises(ssrf_guard.TargetNotAllowed):
            await ssrf_guard.check_url(url, dns)
    with pytest.raises(ssrf_guard.TargetNotAllowed):
        await ssrf_guard.check_url("http://localhost:9901/quitquitquit")  # the real resolver


async def test_refusals_say_nothing_about_what_a_name_resolves_to() -> None:
    """A tenant must not learn internal DNS from the error: one text for every refusal,
    whether the name resolves to a private address, to several, or not at all."""
    dns = FakeResolver(
        {
            "db.internal.test": ["10.20.30.40"],
            "mixed.test": ["8.8.8.8", "192.168.7.7"],
            "meta.test": ["169.254.169.254"],
        }
    )
    texts = set()
    for url in (
        "http://db.internal.test:5432/",
        "http://mixed.test/",
        "http://meta.test/latest",
        "http://absent.test/",
        "http://10.20.30.40/",
        "http://2130706433/",
    ):
        with pytest.raises(ssrf_guard.TargetNotAllowed) as caught:
            await ssrf_guard.check_url(url, dns)
        texts.add(str(caught.value))
    assert len(texts) == 1, texts
    (text,) = texts
    for leak in ("10.20", "192.168", "169.254", "127.0", "test", "resolve to any", "private"):
        assert leak not in text


@pytest.mark.parametrize(
    "url",
    [
        "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:9/hook",  # fullwidth 127.0.0.1
        "http://127\u30020\u30020\u30021:9/hook",  # ideographic full stops
        "http://\uff12\uff11\uff13\uff10\uff17\uff10\uff16\uff14\uff13\uff13/",  # 2130706433
    ],
)
def test_the_check_reads_the_host_as_the_connection_does(url: str) -> None:
    """aiohttp connects to the host as yarl normalises it (IDNA, NFKC): 127.0.0.1 written
    in fullwidth digits is 127.0.0.1 to the connection, so it must be to the check."""
    host = ssrf_guard.target(url).raw_host or ""
    assert host.isascii()
    with pytest.raises(ssrf_guard.TargetNotAllowed):
        ssrf_guard.check_literal(host)


async def test_delivery_connects_only_to_the_addresses_vetted_at_connect_time(
    receiver: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, hits = receiver
    # In this test 127.0.0.1 stands for a public address; every other one is not.
    monkeypatch.setattr(
        ssrf_guard, "non_public", lambda a: None if str(a) == "127.0.0.1" else "private"
    )
    dns = FakeResolver({"hooks.test": ["127.0.0.1"]})
    connector = aiohttp.TCPConnector(
        resolver=ssrf_guard.PinnedResolver(dns), use_dns_cache=False, force_close=True
    )
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(f"http://hooks.test:{port}/first") as reply:
            assert reply.status == 200  # connected to what the guard returned
        dns.table["hooks.test"] = ["127.0.0.2"]  # rebinding to a private address
        with pytest.raises(ssrf_guard.TargetNotAllowed):
            await http.post(f"http://hooks.test:{port}/second")
    assert hits == ["/first"]
    assert dns.lookups == 2  # every connection was vetted


async def test_real_names_of_loopback_are_refused_before_any_connection(
    receiver: tuple[int, list[str]],
) -> None:
    port, hits = receiver
    connector = aiohttp.TCPConnector(resolver=ssrf_guard.PinnedResolver())
    async with aiohttp.ClientSession(connector=connector) as http:
        with pytest.raises(ssrf_guard.TargetNotAllowed):
            await http.post(f"http://localhost:{port}/hook")
    assert hits == []
