"""The presence service under a slow-connection flood: a cap per client
address, a time limit for a request's head, for a request and for an idle keep-alive
connection; an open authenticated WebSocket is cut by none of them.

Small limits are injected (`HttpLimits`, loopback not exempt so that one 127.0.12.x
address is a client address); each wait is for a condition with a deadline."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from argon2 import PasswordHasher

from presence_api.connguard import HttpLimits
from presence_api.server import Running, make_app, serve_app
from presence_api.service import SERVICE
from support.presence_app import PASSWORD, Clock, csrf_of, hook_keys, make_config
from support.slow_clients import Held, close_all, hold, hold_many
from support.wait import free_port

HOST = "127.0.12.1"
FLOODER = "127.0.12.31"        # the slow clients' address
OTHER = "127.0.12.32"          # a normal client
PAGE = "127.0.12.33"           # a logged-in chat page
ALICE = "alice@a.test"
CAP = 64
HEAD = 2.5                     # head, request and idle timeouts of these tests
LIMITS = HttpLimits(per_address=CAP, total=10_000, head_timeout=HEAD, request_timeout=HEAD,
                    idle_timeout=HEAD, exempt=())


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Running, str]]:
    port = free_port(HOST)
    url = f"http://{HOST}:{port}"
    cfg = make_config(tmp_path, url)
    app = make_app(cfg, clock=Clock(), site_key=secrets.token_bytes(32),
                   discoverer=hook_keys(cfg))
    running = await serve_app(app, HOST, port, LIMITS)
    hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    await app[SERVICE].lookups.create_account(ALICE, hasher.hash(PASSWORD), time.time())
    yield running, url
    await running.close()


def session(url: str, source: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=url, cookie_jar=aiohttp.CookieJar(unsafe=True),
        connector=aiohttp.TCPConnector(local_addr=(source, 0)),
        timeout=aiohttp.ClientTimeout(total=10))


async def logged_in_page(s: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    r = await s.get("/login")
    r = await s.post("/login", data={"csrf": csrf_of(await r.text()), "account": ALICE,
                                     "password": PASSWORD}, allow_redirects=False)
    assert r.status == 303, await r.text()
    ws = await s.ws_connect("/ws", headers={"Origin": url})
    assert (await ws.receive_json(timeout=5))["type"] == "hello"
    return ws


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


async def test_a_flood_from_one_address_is_capped_and_timed_out(server) -> None:
    running, url = server
    async with session(url, PAGE) as page, session(url, OTHER) as other:
        ws = await logged_in_page(page, url)
        partial = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n"
        held = await hold_many(HOST, running.port, FLOODER, 300, (b"", partial))
        try:
            def closed() -> list[Held]:
                return [h for h in held if h.closed_after is not None]
            # Beyond the cap: closed at once, long before any timeout could act.
            await until(lambda: len(closed()) >= 300 - CAP, HEAD * 0.8, "the refused closed")
            assert len(closed()) == 300 - CAP
            # Meanwhile another address is served, and the flooder's is not.
            r = await other.get("/openapi.json")
            assert r.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with session(url, FLOODER) as flooder:
                    await flooder.get("/openapi.json")
            # Within the cap: closed when their head has not come within HEAD.
            await until(lambda: len(closed()) == 300, HEAD + 5, "all 300 closed")
            late = sorted(h.closed_after for h in held if h.closed_after >= HEAD * 0.8)
            assert len(late) == CAP and late[0] >= HEAD - 0.1, late[:3]
            assert not any(h.received for h in held)   # refused without an answer
            # The chat page's WebSocket outlived every timer and still answers.
            assert not ws.closed
            await ws.send_json({"type": "no-such-frame"})
            while (frame := await ws.receive_json(timeout=5))["type"] != "error":
                pass                                   # presence frames meanwhile
            assert frame["error"] == "bad_frame"
            # The address is free again once its connections are gone.
            async with session(url, FLOODER) as flooder:
                assert (await flooder.get("/openapi.json")).status == 200
        finally:
            await close_all(held)
        await ws.close()


async def test_a_dripping_head_a_slow_body_and_an_idle_keepalive_are_closed(server, caplog) -> None:
    running, url = server
    port = running.port
    drip = await hold(HOST, port, FLOODER)
    dripping = asyncio.create_task(drip.drip(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n",
                                             every=0.2))      # 41 bytes: 8 s, over HEAD
    body = await hold(HOST, port, FLOODER, b"POST /login HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/x-www-form-urlencoded\r\n"
                      b"Content-Length: 100\r\n\r\ncsrf=")      # the form is read first
    idle = await hold(HOST, port, FLOODER, b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        await until(lambda: all(h.closed_after is not None for h in (drip, body, idle)),
                    HEAD + 5, "the dripping head, the slow body and the idle connection")
        assert drip.closed_after >= HEAD - 0.1 and body.closed_after >= HEAD - 0.1
        assert body.received == b""                           # cut while its form was read
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert idle.received.startswith(b"HTTP/1.1 200")     # served, then idle
        assert idle.closed_after >= HEAD - 0.1
    finally:
        dripping.cancel()
        await close_all([drip, body, idle])
