"""The two-site chain once more with each site's presence service on PostgreSQL and
Redis (a private PostgreSQL per site, one private Redis for both: each site talks on
its own channel): alice at a.test mails bob at b.test through real Postfix, bob's copy
carries his link, the link opens, and the chat reaches alice's page."""

from __future__ import annotations

from typing import Iterator

import aiohttp
import pytest

from support.postfix_mailbox import online
from support.postgres import Postgres, unavailable as pg_unavailable
from support.presence_ws import next_of
from support.redis import Redis, unavailable as redis_unavailable
from support.two_sites import ALICE, BOB, PASSWORD, World, two_sites, world_dir


@pytest.fixture(scope="module")
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    for why in (pg_unavailable(), redis_unavailable()):
        if why:
            pytest.skip(why)
    pg_a, pg_b, redis = Postgres().start(), Postgres().start(), Redis().start()
    try:
        with world_dir(request) as base, two_sites(
                base, a_presence={"database": pg_a.url, "redis": redis.url},
                b_presence={"database": pg_b.url, "redis": redis.url}) as w:
            yield w
    finally:
        for s in (pg_a, pg_b, redis):
            s.remove()


async def test_the_chain_on_postgresql_and_redis(world: World) -> None:
    w = world
    mid = "<scaled@a.test>"
    w.send([BOB], "On PostgreSQL", mid)
    got = w.mail(BOB, mid)
    ((state, params),) = online(got)
    assert state == "no" and params["account"] == ALICE
    link = params["chat"].strip("<>")
    w.a_presence.wait_log(r"mail \S+ of alice@a.test recorded", timeout=15)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as a, \
            aiohttp.ClientSession() as b:
        async with a.get(w.a_url + "/login") as r:
            csrf = (await r.text()).split('name="csrf" value="')[1].split('"')[0]
        async with a.post(w.a_url + "/login", allow_redirects=False, data={
                "csrf": csrf, "account": ALICE, "password": PASSWORD}) as r:
            assert r.status == 303
        alice = await a.ws_connect(w.a_url + "/ws", headers={"Origin": w.a_url})
        await next_of(alice, "hello")
        async with b.get(link) as r:
            assert r.status == 200 and BOB in await r.text()
        bob = await b.ws_connect(w.a_url + "/ws" + link[len(w.a_url):],
                                 headers={"Origin": w.a_url})
        await next_of(bob, "hello")
        await bob.send_json({"type": "open"})
        opened = await next_of(alice, "opened", recipient=BOB)
        await alice.send_json({"type": "join", "mail_id": opened["mail_id"]})
        await next_of(alice, "room")
        await bob.send_json({"type": "send", "mail_id": opened["mail_id"], "text": "hi"})
        assert (await next_of(alice, "message", text="hi"))["author"] == BOB
        await bob.close()
        await alice.close()
    assert "Redis: subscribed" in w.a_presence.log() and "Redis: subscribed" in w.b_presence.log()
