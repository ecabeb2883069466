"""Re-injection connections are held per transaction and pooled briefly (filter-perf).

Real SMTP on loopback: our filter (aiosmtpd), a re-injection sink we control
(aiosmtpd) and smtplib as Postfix. The presence lookup is a fake (as in
test_content_filter.py): DNS and HTTP are covered by test_lookup_client.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, AsyncIterator

import pytest

from mailtalk.config import parse_text
from mailtalk_milter import filter as filt
from support import free_port
from support.smtp_client import send
from support.smtp_sink import SinkHandler, start_sink
from support.fake_lookup import CLAIM, FakeLookup, msg

HOST = "127.0.18.2"
SINK_HOST = "127.0.18.3"
XFWD = "NAME=mx.a.example ADDR=192.0.2.7 PROTO=ESMTP HELO=mx.a.example IDENT=4FQX5678ZZ SOURCE=REMOTE"


class Setup:
    def __init__(self, running: filt.Running, sink: SinkHandler) -> None:
        self.running, self.sink = running, sink
        self.sessions: list[Any] = []          # the sink's server side of each connection

    async def send(self, rcpts: list[str]) -> Any:
        return await asyncio.to_thread(send, HOST, self.running.port, "alice@a.example",
                                       rcpts, msg(*CLAIM), xforward=XFWD)

    def open_sessions(self) -> int:
        return sum(1 for s in self.sessions
                   if s.transport is not None and not s.transport.is_closing())


class TogetherLookup(FakeLookup):
    """Answers only once `n` lookups are waiting: n mails are in flight together."""

    def __init__(self, n: int) -> None:
        super().__init__("online")
        self.n = n
        self.all_here = asyncio.Event()

    async def lookup(self, account: str, mail_id: str, recipients: list[str],
                     *, queue_id: str = "-") -> Any:
        result = await super().lookup(account, mail_id, recipients, queue_id=queue_id)
        if len(self.calls) >= self.n:
            self.all_here.set()
        await asyncio.wait_for(self.all_here.wait(), 10)
        return result


async def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def filter_setup(extra: str = "", lookup: Any = None) -> AsyncIterator[Setup]:
    """Our filter re-injecting into a sink that records each connection it accepts."""
    sink_server, sink, sink_port = await start_sink(SINK_HOST)
    cfg = parse_text(f"""
[filter]
listen = "{HOST}:{free_port(HOST)}"
reinject = "{SINK_HOST}:{sink_port}"
reinject_timeout = 5
{extra}
""", "test")
    running = await filt.start(cfg, asyncio.Event(), lookup=lookup or FakeLookup("online"))
    setup = Setup(running, sink)
    ehlo = sink.handle_EHLO

    async def counting_ehlo(server: Any, session: Any, envelope: Any, hostname: str,
                            responses: list[str]) -> list[str]:
        setup.sessions.append(server)   # aiosmtpd reads this signature: keep it explicit
        return await ehlo(server, session, envelope, hostname, responses)
    sink.handle_EHLO = counting_ehlo  # type: ignore[method-assign]
    try:
        yield setup
    finally:
        await running.close()
        sink_server.close()


@pytest.fixture
async def s() -> AsyncIterator[Setup]:
    async with filter_setup() as setup:
        yield setup


async def test_sessions_one_after_another_reuse_one_connection(s: Setup) -> None:
    for _ in range(3):
        r = await s.send(["bob@b.example"])
        assert r.data is not None and r.data[0] == 250
    assert len(s.sink.got) == 3
    assert len(s.sessions) == 1             # one greeting and EHLO for three mails
    assert all(g.xforward for g in s.sink.got)    # XFORWARD still in every transaction


async def test_idle_connection_is_closed_after_the_idle_time() -> None:
    async with filter_setup("reinject_idle_seconds = 0.3") as s:
        r = await s.send(["bob@b.example"])
        assert r.data is not None and r.data[0] == 250
        assert s.open_sessions() == 1            # pooled, still open
        await wait_for(lambda: s.open_sessions() == 0)


@pytest.mark.parametrize("keep", [0, 2])
async def test_idle_connections_kept_are_capped_by_the_config(keep: int) -> None:
    # Four mails in flight at once (their lookups wait for each other) need four
    # connections; once they are done, only `reinject_idle_connections` stay open
    # (each holds a re-injection smtpd process).
    async with filter_setup(f"reinject_idle_connections = {keep}", TogetherLookup(4)) as s:
        rs = await asyncio.gather(*(s.send([f"r{i}@b.example"]) for i in range(4)))
        assert all(r.data is not None and r.data[0] == 250 for r in rs)
        assert len(s.sink.got) == 4 and len(s.sessions) == 4
        await wait_for(lambda: s.open_sessions() == keep)
        assert len(s.running.handler.pool._idle) == keep     # noqa: SLF001


async def test_connection_closed_by_the_server_while_idle_is_replaced(s: Setup) -> None:
    r = await s.send(["bob@b.example"])
    assert r.data is not None and r.data[0] == 250
    first = s.sessions[0]
    await first.push("421 4.4.2 sink.test Error: timeout exceeded")
    first.transport.close()
    await asyncio.sleep(0)                    # let nothing else happen: no fixed wait
    r = await s.send(["bob@b.example", "carol@b.example"])
    assert r.mail[0] == 250
    assert r.data is not None and r.data[0] == 250
    assert len(s.sessions) == 2
    assert sorted(g.rcpts[0] for g in s.sink.got[1:]) == ["bob@b.example", "carol@b.example"]
