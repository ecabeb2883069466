"""The filter's durable record of partial deliveries (milter/delivered.py), in use:
the filter over real SMTP on loopback (our aiosmtpd filter, a re-injection sink we
control, smtplib as Postfix; the presence lookup is a fake), restarted between a
partial delivery and Postfix's retry. The store alone: tests/unit/test_delivered_store.py."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from mailtalk.config import parse_text
from mailtalk_milter import delivered as dlv
from mailtalk_milter import filter as filt
from support import free_port
from support.smtp_client import send
from support.smtp_sink import SinkHandler, start_sink
from support.fake_lookup import CLAIM, FakeLookup, msg

HOST = "127.0.19.2"
SINK_HOST = "127.0.19.3"
QID = "4FQX9190ZZ"
XFWD = f"NAME=mx.a.example ADDR=192.0.2.7 PROTO=ESMTP HELO=mx.a.example IDENT={QID} SOURCE=REMOTE"
BOB, CAROL = "bob@b.example", "carol@b.example"


class Filter:
    """Our filter in front of a sink; `restart()` is a new filt.start on the same dirs."""

    def __init__(self, sink: SinkHandler, sink_port: int, state_dir: Path) -> None:
        self.sink, self.sink_port, self.state_dir = sink, sink_port, state_dir
        self.running: Any = None

    async def start(self) -> None:
        cfg = parse_text(f"""
[site]
state_dir = "{self.state_dir}"
[filter]
listen = "{HOST}:{free_port(HOST)}"
reinject = "{SINK_HOST}:{self.sink_port}"
reinject_timeout = 5
""", "test")
        self.running = await filt.start(cfg, asyncio.Event(), lookup=FakeLookup("online"))

    async def restart(self) -> None:
        await self.running.close()
        await self.start()

    async def send(self, rcpts: list[str], data: bytes, xforward: str | None = XFWD) -> Any:
        return await asyncio.to_thread(send, HOST, self.running.port, "alice@a.example",
                                       rcpts, data, xforward=xforward)

    def delivered_to(self) -> list[str]:
        return sorted(r for g in self.sink.got for r in g.rcpts)


async def _filter(state_dir: Path) -> AsyncIterator[Filter]:
    sink_server, sink, sink_port = await start_sink(SINK_HOST)
    f = Filter(sink, sink_port, state_dir)
    await f.start()
    try:
        yield f
    finally:
        await f.running.close()
        sink_server.close()


@pytest.fixture
async def f(tmp_path: Path) -> AsyncIterator[Filter]:
    async for x in _filter(tmp_path / "state"):
        yield x


async def test_a_restart_between_the_partial_delivery_and_the_retry_delivers_each_once(
        f: Filter) -> None:
    mail = msg(*CLAIM, "Subject: two links")
    f.sink.data_replies = ["250 2.0.0 Ok", "451 4.3.0 later"]   # group 2 refused
    r = await f.send([BOB, CAROL], mail)
    assert r.data is not None and r.data[0] == 451
    assert f.delivered_to() == [BOB]

    await f.restart()                    # the filter restarts before Postfix retries

    r = await f.send([BOB, CAROL], mail)  # Postfix's retry: same IDENT, same bytes
    assert r.data is not None and r.data[0] == 250
    assert f.delivered_to() == [BOB, CAROL]           # carol now, bob not again


async def test_a_retry_deferred_again_keeps_the_record_until_it_goes_through(
        f: Filter) -> None:
    mail = msg(*CLAIM, "Subject: two links")
    f.sink.data_replies = ["250 2.0.0 Ok", "451 4.3.0 later", "451 4.3.0 still later"]
    assert (await f.send([BOB, CAROL], mail)).data[0] == 451
    await f.restart()
    assert (await f.send([BOB, CAROL], mail)).data[0] == 451      # carol refused again
    await f.restart()
    assert (await f.send([BOB, CAROL], mail)).data[0] == 250
    assert f.delivered_to() == [BOB, CAROL]


async def test_a_changed_message_under_the_same_queue_id_goes_to_everyone(f: Filter) -> None:
    f.sink.data_replies = ["250 2.0.0 Ok", "451 4.3.0 later"]
    assert (await f.send([BOB, CAROL], msg(*CLAIM, "Subject: one"))).data[0] == 451
    await f.restart()
    assert (await f.send([BOB, CAROL], msg(*CLAIM, "Subject: two"))).data[0] == 250
    assert f.delivered_to() == [BOB, BOB, CAROL]


async def test_mail_delivered_at_once_makes_no_file(f: Filter) -> None:
    assert (await f.send([BOB, CAROL], msg(*CLAIM))).data[0] == 250     # two groups
    assert (await f.send([BOB], msg(*CLAIM))).data[0] == 250            # one transaction
    f.sink.data_replies = ["451 4.3.0 later"]
    assert (await f.send([BOB, CAROL], msg(*CLAIM))).data[0] == 451     # nothing delivered
    assert not (f.state_dir / dlv.FILE_NAME).exists()
    assert not f.running.handler.delivered._qids


async def test_an_unusable_file_costs_no_mail(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """Worst case a duplicate after a restart: never a loss, never a 5xx. Without a
    restart the filter still remembers in memory, as it always did."""
    (tmp_path / "plain-file").write_text("not a directory\n")
    caplog.set_level(logging.INFO, "mailtalk.filter")
    async for f in _filter(tmp_path / "plain-file" / "state"):
        mail = msg(*CLAIM, "Subject: two links")
        f.sink.data_replies = ["250 2.0.0 Ok", "451 4.3.0 later"]
        assert (await f.send([BOB, CAROL], mail)).data[0] == 451
        assert any(r.levelno == logging.ERROR and r.getMessage().startswith(f"{QID}: cannot write")
                   for r in caplog.records)
        assert (await f.send([BOB, CAROL], mail)).data[0] == 250
        assert f.delivered_to() == [BOB, CAROL]
