"""The lookup client's DNS side against real DNS: a real dnsmasq (the answer is cached
between lookups) and a dead DNS server (the lookup still ends within its timeout).
The HTTP side, over an injected resolver: tests/component/test_lookup_client.py."""

from __future__ import annotations

import secrets
import socket
import time

import pytest

from mailtalk.lookup import PresenceLookup
from support.dnsmasq import DNS_HOST, Dnsmasq
from support.fake_presence_remote import FakeRemote
from support.lookup_config import make_config
from support.wait import free_port, free_udp_port

REMOTE_HOST = "127.0.14.7"


def mail_id() -> str:
    return secrets.token_urlsafe(33)


@pytest.fixture(scope="module")
def remote_port() -> int:
    return free_port(REMOTE_HOST)


@pytest.fixture(scope="module")
def dnsmasq(remote_port):
    d = Dnsmasq({
        "_mailtalk.a.test": [f"v=mailtalk1; api=http://{REMOTE_HOST}:{remote_port}"],
    })
    yield d
    d.stop()


@pytest.fixture
async def remote(remote_port):
    r = await FakeRemote(REMOTE_HOST, remote_port).start()
    yield r
    await r.stop()


@pytest.fixture
async def client(dnsmasq):
    c = PresenceLookup(make_config(dnsmasq.nameserver, lookup_timeout=1.0, concurrency=2))
    yield c
    await c.close()


async def test_dead_dns_gives_unknown_within_the_timeout():
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # reads queries, never answers
    hole.bind((DNS_HOST, free_udp_port(DNS_HOST)))
    c = PresenceLookup(make_config(f"{DNS_HOST}:{hole.getsockname()[1]}", lookup_timeout=0.5))
    try:
        start = time.monotonic()
        res = await c.lookup("alice@a.test", mail_id(), ["bob@b.test"])
        assert time.monotonic() - start < 3.5     # 0.5 s bound; unbounded: 5 s or more
        assert res.state == "unknown"
    finally:
        await c.close()
        hole.close()


async def test_dns_answer_is_cached_between_lookups(client, remote):
    # The second lookup reaches the service without a DNS query: stop dnsmasq's
    # answers by pointing at nothing would need a new client, so look at the cache.
    await client.lookup("alice@a.test", mail_id(), ["bob@b.test"])
    found = await client.discoverer.discover("a.test")
    assert found.cached and found.endpoint is not None
