"""The lookup client against a real dnsmasq and a real aiohttp server on loopback.

The aiohttp server is a stand-in for a foreign site's presence service (see
support/discovery_extra.py): it lets the test make the far side slow, oversize or
hostile, which the real presence service never is.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from datetime import datetime, timezone

import pytest
from aiohttp import web

from presence_api.lookup_client import LookupResult, PresenceLookup
from support.discovery_extra import DNS_HOST, Dnsmasq, FakeRemote, make_config
from support.wait import free_port, free_udp_port

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


@pytest.fixture(scope="module")
def dnsmasq(remote_port):
    d = Dnsmasq({
        "_mailtalk.a.test": [f"v=mailtalk1; api=http://{REMOTE_HOST}:{remote_port}"],
        "_mailtalk.plain.test": [f"v=mailtalk1; api=http://chat.plain.test:{remote_port}"],
        "_mailtalk.bad.test": ["v=mailtalk1; api="],
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


async def test_online_sender_gets_yes_and_a_link_per_recipient(client, remote):
    mid = mail_id()
    res = await client.lookup("alice@a.test", mid, ["bob@b.test", "Carol@b.test"])
    assert res == LookupResult("yes", "online", "alice@a.test",
                               datetime(2026, 11, 29, 7, 0, tzinfo=timezone.utc),
                               {"bob@b.test": remote.link("bob@b.test"),
                                "Carol@b.test": remote.link("Carol@b.test")})
    assert remote.requests == [{"account": "alice@a.test", "mail_id": mid,
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
    assert bool(res.links) == (state != "unknown")


@pytest.mark.parametrize("account,mid", [
    ("alice@missing.test", None),        # no record
    ("alice@plain.test", None),          # http:// off loopback: refused, never asked
    ("alice@bad.test", None),            # malformed record
    ("not-an-account", None),
    ("alice@a.test", "short"),           # malformed Mail-ID: not even asked
])
async def test_no_usable_endpoint_is_unknown_without_asking(client, remote, account, mid):
    res = await client.lookup(account, mid or mail_id(), ["bob@b.test"])
    assert (res.state, res.status, res.links) == ("unknown", "unknown", {})
    assert res.checked.tzinfo is not None
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


async def test_identical_lookups_in_flight_share_one_request(client, remote):
    async def held(request, body):
        await remote.release.wait()
        return web.json_response({"status": "online", "links": {
            r: remote.link(r) for r in body["recipients"]}})
    remote.handler = held
    mid = mail_id()
    tasks = [asyncio.ensure_future(client.lookup("alice@a.test", mid, ["bob@b.test"]))
             for _ in range(5)]
    other = asyncio.ensure_future(client.lookup("alice@a.test", mail_id(), ["bob@b.test"]))
    await until(lambda: len(remote.requests) == 2, what="two requests")
    remote.release.set()
    results = await asyncio.gather(*tasks)
    assert (await other).state == "yes"
    assert all(r == results[0] and r.state == "yes" for r in results)
    assert len(remote.requests) == 2


async def test_concurrent_requests_per_domain_are_capped(client, remote):
    # `remote` is an older service: no batch endpoint (404). Beyond the cap of 2,
    # lookups wait; the batch they would have gone in is refused, and they are asked
    # again one by one, never more than 2 at once.
    async def held(request, body):
        await remote.release.wait()
        return web.json_response({"status": "online", "links": {}})
    remote.handler = held
    tasks = [asyncio.ensure_future(client.lookup("alice@a.test", mail_id(), ["bob@b.test"]))
             for _ in range(5)]
    await until(lambda: client.pending("a.test") == (2, 3) and remote.in_flight == 2,
                what="2 requests running and 3 lookups waiting")
    assert len(remote.requests) == 2
    remote.release.set()
    results = await asyncio.gather(*tasks)
    assert all(r.state == "yes" for r in results)
    assert remote.max_in_flight == 2 and len(remote.requests) == 5
    assert client.pending("a.test") == (0, 0)


@pytest.fixture
async def batching_remote(remote_port):
    r = await FakeRemote(REMOTE_HOST, remote_port, batch=True).start()
    yield r
    await r.stop()


async def test_lookups_waiting_behind_the_cap_go_in_one_batch(client, batching_remote):
    remote = batching_remote

    async def held(request, body):
        await remote.release.wait()
        return web.json_response(remote.answer(body))
    remote.handler = held
    first = []
    for n in (1, 2):       # one by one: made in one turn, they would share a request
        first.append(asyncio.ensure_future(
            client.lookup("alice@a.test", mail_id(), ["bob@b.test"])))
        await until(lambda: remote.in_flight == n, what=f"{n} requests running")
    later = {f"r{i}@b.test": asyncio.ensure_future(
        client.lookup("alice@a.test", mail_id(), [f"r{i}@b.test"])) for i in range(5)}
    await until(lambda: client.pending("a.test") == (2, 5), what="5 lookups waiting")
    remote.release.set()
    for rcpt, task in later.items():            # each its own answer, from one batch
        res = await task
        assert res.state == "yes" and res.links == {rcpt: remote.link(rcpt)}
    assert all(r.state == "yes" for r in await asyncio.gather(*first))
    assert len(remote.requests) == 2
    assert [len(b) for b in remote.batches] == [5]


async def test_lookups_made_in_one_turn_share_a_request(client, batching_remote):
    await client.lookup("alice@a.test", mail_id(), ["bob@b.test"])     # DNS now cached
    batching_remote.requests.clear()
    results = await asyncio.gather(*(client.lookup(f"u{i}@a.test", mail_id(), ["bob@b.test"])
                                     for i in range(4)))
    assert all(r.state == "yes" for r in results)
    assert batching_remote.requests == [] and [len(b) for b in batching_remote.batches] == [4]


async def test_one_bad_answer_in_a_batch_is_unknown_for_that_lookup_only(client,
                                                                         batching_remote):
    remote = batching_remote

    async def mixed(request, body):
        answers = [remote.answer(x) for x in body["lookups"]]
        answers[1] = {"status": "dancing", "links": {}}
        answers[2]["links"] = {"bob@b.test": "https://evil.test/c/x"}   # off the origin
        return web.json_response({"answers": answers})
    remote.batch_handler = mixed
    await client.lookup("alice@a.test", mail_id(), ["bob@b.test"])     # DNS now cached
    results = await asyncio.gather(*(client.lookup(f"u{i}@a.test", mail_id(), ["bob@b.test"])
                                     for i in range(3)))
    assert [r.state for r in results] == ["yes", "unknown", "yes"]
    assert results[0].links and not results[2].links


async def test_a_batch_answer_that_does_not_match_is_unknown_for_all(client, batching_remote):
    async def short(request, body):
        return web.json_response({"answers": [batching_remote.answer(body["lookups"][0])]})
    batching_remote.batch_handler = short
    await client.lookup("alice@a.test", mail_id(), ["bob@b.test"])     # DNS now cached
    results = await asyncio.gather(*(client.lookup(f"u{i}@a.test", mail_id(), ["bob@b.test"])
                                     for i in range(3)))
    assert [r.state for r in results] == ["unknown"] * 3


async def test_more_than_100_recipients_are_split(client, remote):
    rcpts = [f"user{i}@b.test" for i in range(250)]
    res = await client.lookup("alice@a.test", mail_id(), rcpts + rcpts[:3])
    assert sorted(len(r["recipients"]) for r in remote.requests) == [50, 100, 100]
    assert res.state == "yes" and set(res.links) == set(rcpts)


async def test_dns_answer_is_cached_between_lookups(client, remote):
    # The second lookup reaches the service without a DNS query: stop dnsmasq's
    # answers by pointing at nothing would need a new client, so look at the cache.
    await client.lookup("alice@a.test", mail_id(), ["bob@b.test"])
    found = await client.discoverer.discover("a.test")
    assert found.cached and found.endpoint is not None


async def test_a_batch_carries_at_most_1000_recipients(client, batching_remote):
    await client.lookup("alice@a.test", mail_id(), ["bob@b.test"])     # DNS now cached
    rcpts = [f"user{i}@b.test" for i in range(100)]
    results = await asyncio.gather(*(client.lookup(f"u{i}@a.test", mail_id(), rcpts)
                                     for i in range(12)))
    assert all(r.state == "yes" and len(r.links) == 100 for r in results)
    assert sorted(len(b) for b in batching_remote.batches) == [2, 10]
