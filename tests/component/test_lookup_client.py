"""The lookup client's HTTP side against a real aiohttp server on loopback; DNS answers
come from an injected resolver (StaticResolver), no DNS server.

The aiohttp server is a stand-in for a foreign site's presence service (see
support/fake_presence_remote.py): it lets the test make the far side slow, oversize or
hostile, which the real presence service never is. DNS itself (caching, a dead
server): tests/e2e/test_lookup_dns.py."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import datetime, timezone

import pytest
from aiohttp import web

from mailtalk.lookup import LookupResult, PresenceLookup
from support.fake_presence_remote import FakeRemote
from support.lookup_config import make_config
from support.static_dns import StaticResolver
from support.wait import free_port

REMOTE_HOST = "127.0.14.7"


def mail_id() -> str:
    return secrets.token_urlsafe(33)


async def until(pred, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def remote_port() -> int:
    return free_port(REMOTE_HOST)


@pytest.fixture
def resolver(remote_port) -> StaticResolver:
    return StaticResolver({
        "_mailtalk.a.test": [f"v=mailtalk1; api=http://{REMOTE_HOST}:{remote_port}"],
        "_mailtalk.plain.test": [f"v=mailtalk1; api=http://chat.plain.test:{remote_port}"],
        "_mailtalk.bad.test": ["v=mailtalk1; api="],
    })


@pytest.fixture
async def remote(remote_port):
    r = await FakeRemote(REMOTE_HOST, remote_port).start()
    yield r
    await r.stop()


@pytest.fixture
async def client(resolver):
    c = PresenceLookup(make_config(lookup_timeout=1.0, concurrency=2), resolver=resolver)
    yield c
    await c.close()


async def test_online_sender_gets_yes_and_a_link_per_recipient(client, remote):
    mid = mail_id()
    res = await client.lookup("alice@a.test", mid, ["bob@b.test", "Carol@b.test"])
    assert res == LookupResult("online", datetime(2026, 11, 29, 7, 0, tzinfo=timezone.utc),
                               {"bob@b.test": remote.link("bob@b.test"),
                                "Carol@b.test": remote.link("Carol@b.test")})
    assert res.state == "yes" and res.reason == ""
    assert remote.requests == [{"account": "alice@a.test", "mail_id": mid, "message_id": "",
                                "recipients": ["bob@b.test", "Carol@b.test"]}]


@pytest.mark.parametrize("status,state", [("offline", "no"), ("away", "yes"),
                                          ("busy", "yes"), ("unknown", "unknown")])
async def test_status_maps_to_state(client, remote, status, state):
    async def answer(request, body):
        return web.json_response({"status": status, "checked": "2026-11-29T07:00:00+00:00",
                                  "links": {"bob@b.test": remote.link("bob@b.test")}})
    remote.handler = answer
    res = await client.lookup("alice@a.test", mail_id(), ["bob@b.test"])
    assert (res.state, res.status) == (state, status)
    # `unknown` with a link: a known mail whose sender's presence the service could not
    # tell (its processes cut off from each other): the link stays
    assert res.links == {"bob@b.test": remote.link("bob@b.test")}
    assert bool(res.reason) == (state == "unknown")


async def test_unknown_without_links_is_a_refusal(client, remote):
    async def answer(request, body):
        return web.json_response({"status": "unknown", "checked": "2026-11-29T07:00:00+00:00",
                                  "links": {}})
    remote.handler = answer
    res = await client.lookup("alice@a.test", mail_id(), ["bob@b.test"])
    assert (res.state, res.links, res.reason) == ("unknown", {}, "the service does not know this mail")


@pytest.mark.parametrize("account,mid", [
    ("alice@missing.test", None),        # no record
    ("alice@plain.test", None),          # http:// off loopback: refused, never asked
    ("alice@bad.test", None),            # malformed record
    ("not-an-account", None),            # (read_claim refuses it before: defence)
])
async def test_no_usable_endpoint_is_unknown_without_asking(client, remote, account, mid):
    res = await client.lookup(account, mid or mail_id(), ["bob@b.test"])
    assert (res.state, res.status, res.links) == ("unknown", "unknown", {})
    assert res.checked.tzinfo is not None and res.reason
    assert remote.requests == []


async def test_slow_service_gives_unknown_within_the_timeout(client, remote):
    async def never(request, body):
        await remote.release.wait()
        return web.json_response({"status": "online"})
    remote.handler = never
    start = time.monotonic()
    res = await client.lookup("alice@a.test", mail_id(), ["bob@b.test"])
    # lookup_timeout is 1 s here; a bound with slack for a loaded machine, not a speed
    # test: unbounded, the lookup would wait for a server that never answers.
    assert time.monotonic() - start < 5.0
    assert res.state == "unknown" and res.links == {}
    assert len(remote.requests) == 1


@pytest.mark.parametrize("chunked", [False, True])
async def test_oversize_answer_is_unknown(client, remote, chunked):
    huge = b'{"status": "online", "links": {}, "pad": "' + b"x" * 100_000 + b'"}'

    async def answer(request, body):
        if not chunked:
            return web.Response(body=huge, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(huge), 8192):
            await resp.write(huge[i:i + 8192])
        await resp.write_eof()
        return resp
    remote.handler = answer
    res = await client.lookup("alice@a.test", mail_id(), ["bob@b.test"])
    assert res.state == "unknown"


@pytest.mark.parametrize("reply", [
    web.json_response({"error": "slow down"}, status=429),
    web.Response(status=302, headers={"Location": "http://127.0.14.8:1/api/v1/lookup"}),
    web.Response(text="not json", content_type="application/json"),
    web.json_response({"status": "sleeping"}),
    web.json_response({"status": "online", "links": ["x"]}),
])
async def test_bad_answers_are_unknown(client, remote, reply):
    async def answer(request, body):
        return reply
    remote.handler = answer
    res = await client.lookup("alice@a.test", mail_id(), ["bob@b.test"])
    assert (res.state, res.links) == ("unknown", {})


async def test_links_off_the_published_origin_are_refused(client, remote):
    good = remote.link("dave@b.test")

    async def answer(request, body):
        return web.json_response({"status": "online", "links": {
            "bob@b.test": f"http://127.0.14.8:{remote.port}/c/x",        # other host
            "carol@b.test": f"https://{REMOTE_HOST}:{remote.port}/c/x",  # other scheme
            "erin@b.test": f"http://{REMOTE_HOST}:{remote.port + 1}/c/x",  # other port
            "frank@b.test": f"{remote.base}/c/x> <https://evil.example/", # header break-out
            "dave@b.test": good,
            "eve@b.test": remote.link("eve@b.test"),                     # not asked about
        }})
    remote.handler = answer
    rcpts = ["bob@b.test", "carol@b.test", "erin@b.test", "frank@b.test", "dave@b.test"]
    res = await client.lookup("alice@a.test", mail_id(), rcpts)
    assert res.state == "yes" and res.links == {"dave@b.test": good}


async def test_concurrent_requests_per_domain_are_capped(client, remote):
    # Beyond the cap of 2 connections to a site that answers, lookups wait for one.
    assert (await client.lookup("alice@a.test", mail_id(), ["bob@b.test"])).state == "yes"
    remote.requests.clear()

    async def held(request, body):
        await remote.release.wait()
        return web.json_response({"status": "online", "links": {}})
    remote.handler = held
    tasks = [asyncio.ensure_future(client.lookup("alice@a.test", mail_id(), ["bob@b.test"]))
             for _ in range(5)]
    await until(lambda: remote.in_flight == 2, what="2 requests running")
    for _ in range(20):                    # the other 3 stay queued, not sent
        await asyncio.sleep(0.01)
    assert len(remote.requests) == 2
    remote.release.set()
    results = await asyncio.gather(*tasks)
    assert all(r.state == "yes" for r in results)
    assert remote.max_in_flight == 2 and len(remote.requests) == 5


async def test_past_the_cap_a_slow_site_gets_unknown_at_once(client, remote):
    """Once a lookup to the site has waited half the lookup timeout, a mail does not
    queue behind it: `unknown` at once, nothing sent; the ones in flight go on."""
    assert (await client.lookup("alice@a.test", mail_id(), ["bob@b.test"])).state == "yes"
    remote.requests.clear()

    async def held(request, body):
        await remote.release.wait()
        return web.json_response({"status": "online", "links": {}})
    remote.handler = held
    tasks = [asyncio.ensure_future(client.lookup("alice@a.test", mail_id(), ["bob@b.test"]))
             for _ in range(2)]
    await until(lambda: remote.in_flight == 2, what="2 requests running")
    b = client.breaker
    await until(lambda: time.monotonic() - b._sites["a.test"].started[0] >= b.slow_after,
                timeout=b.slow_after + 5, what="the lookups in flight to wait slow_after")
    extra = await client.lookup("alice@a.test", mail_id(), ["bob@b.test"])
    assert extra.state == "unknown" and "per-site cap" in extra.reason, extra
    assert len(remote.requests) == 2
    remote.release.set()
    results = await asyncio.gather(*tasks)
    assert all(r.state == "yes" for r in results)
    assert client.breaker.refused["cap"] >= 1


async def test_more_than_100_recipients_are_split(client, remote):
    rcpts = [f"user{i}@b.test" for i in range(250)]
    res = await client.lookup("alice@a.test", mail_id(), rcpts)
    assert sorted(len(r["recipients"]) for r in remote.requests) == [50, 100, 100]
    assert res.state == "yes" and set(res.links) == set(rcpts)
