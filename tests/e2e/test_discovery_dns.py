"""Discovery of a domain's presence service through real DNS: a real dnsmasq (records
over the wire, TTLs, negative caching, bad records) and dead or refusing DNS servers.
The grammar, and discovery over an injected resolver: tests/unit/test_discovery.py."""

from __future__ import annotations

import socket
import time

import pytest

from mailtalk.discovery import Discoverer
from support.dnsmasq import DNS_HOST, CountingResolver, Dnsmasq
from support.lookup_config import make_config
from support.wait import free_udp_port

# --- through a real dnsmasq

LONG = ["v=mailtalk1; api=https://chat.long.test/" + "x" * 200] + ["y" * 250] * 9


@pytest.fixture(scope="module")
def dnsmasq():
    d = Dnsmasq({
        "_mailtalk.ok.test": ["v=mailtalk1; api=https://chat.ok.test"],
        "_mailtalk.split.test": [["v=mailtalk1; ", "api=http://127.0.14.9:8080"]],
        "_mailtalk.both.test": ["v=spf1 -all", "v=mailtalk1; api=https://chat.both.test"],
        "_mailtalk.other.test": ["v=spf1 -all"],
        "_mailtalk.plain.test": ["v=mailtalk1; api=http://chat.plain.test"],
        "_mailtalk.long.test": [LONG],
    }, ttl=60)
    yield d
    d.stop()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def discoverer(d: Dnsmasq, clock: Clock, **cfg):
    counting = CountingResolver(d.host, d.port)
    disc = Discoverer(make_config(d.nameserver, **cfg).dns, resolver=counting, clock=clock)
    return disc, counting


async def test_configured_nameserver_is_used(dnsmasq):
    disc = Discoverer(make_config(dnsmasq.nameserver).dns)       # its own dnspython resolver
    found = await disc.discover("ok.test")
    assert found.endpoint is not None and found.endpoint.api == "https://chat.ok.test"
    split = await disc.discover("Split.Test.")
    assert split.endpoint is not None and split.endpoint.api == "http://127.0.14.9:8080"
    both = await disc.discover("both.test")
    assert both.endpoint is not None and both.endpoint.host == "chat.both.test"


async def test_ttl_honoured_and_capped_by_max_ttl(dnsmasq):
    clock = Clock()
    disc, counting = discoverer(dnsmasq, clock)                 # record TTL 60
    assert (await disc.discover("ok.test")).endpoint is not None
    clock.t += 59
    again = await disc.discover("ok.test")
    assert again.cached and len(counting.queries) == 1
    clock.t += 2
    assert not (await disc.discover("ok.test")).cached
    assert len(counting.queries) == 2

    disc, counting = discoverer(dnsmasq, clock, max_ttl=10)
    await disc.discover("ok.test")
    clock.t += 9
    assert (await disc.discover("ok.test")).cached
    clock.t += 2
    await disc.discover("ok.test")
    assert len(counting.queries) == 2


@pytest.mark.parametrize("domain", ["missing.test", "other.test"])   # NXDOMAIN, no mailtalk TXT
async def test_missing_record_cached_for_negative_ttl(dnsmasq, domain):
    clock = Clock()
    disc, counting = discoverer(dnsmasq, clock, negative_ttl=30)
    first = await disc.discover(domain)
    assert first.endpoint is None and first.error == "no record"
    clock.t += 29
    assert (await disc.discover(domain)).cached
    clock.t += 2
    assert not (await disc.discover(domain)).cached
    assert len(counting.queries) == 2


async def test_bad_records_give_no_endpoint(dnsmasq):
    clock = Clock()
    disc, counting = discoverer(dnsmasq, clock, negative_ttl=30)
    plain = await disc.discover("plain.test")
    assert plain.endpoint is None and "https" in plain.error
    long = await disc.discover("long.test")                      # 2.4 kB in ten strings
    assert long.endpoint is None and "longer than" in long.error
    clock.t += 31                                                # cached min(ttl, negative_ttl)
    await disc.discover("plain.test")
    assert counting.queries.count("_mailtalk.plain.test.") == 2


def _black_hole() -> socket.socket:
    """A UDP 'nameserver' that reads queries and never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((DNS_HOST, free_udp_port(DNS_HOST)))
    return s


async def test_dead_dns_ends_within_the_timeout_and_is_not_cached():
    hole = _black_hole()
    try:
        ns = f"{DNS_HOST}:{hole.getsockname()[1]}"
        clock = Clock()
        disc = Discoverer(make_config(ns).dns, clock=clock)
        start = time.monotonic()
        found = await disc.discover("ok.test", timeout=0.5)
        # A bound with slack for a loaded machine, not a speed measurement: unbounded,
        # dnspython would wait its default lifetime of 5 s.
        assert time.monotonic() - start < 3.5
        assert found.endpoint is None and found.error == "timeout" and not found.cached
        again = await disc.discover("ok.test", timeout=0.3)
        assert not again.cached
    finally:
        hole.close()


async def test_refusing_dns_gives_no_endpoint():
    port = free_udp_port(DNS_HOST)           # nothing listens: ICMP port unreachable
    disc = Discoverer(make_config(f"{DNS_HOST}:{port}").dns)
    found = await disc.discover("ok.test", timeout=0.5)
    assert found.endpoint is None and not found.cached
