"""The filter's durable record of partial deliveries (milter/delivered.py).

Unit tests of the store (a real SQLite file in tmp_path), then the filter over real
SMTP on loopback, as in test_filter_smtp.py: our aiosmtpd filter, a re-injection sink
we control and smtplib as Postfix; the presence lookup is a fake. The end-to-end test
restarts the filter between a partial delivery and Postfix's retry."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import stat
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from mailtalk.config import parse_text
from mailtalk_milter import delivered as dlv
from mailtalk_milter import filter as filt
from mailtalk_milter.delivered import DeliveredStore
from support import free_port
from support.filter_extra import SinkHandler, send, start_sink
from support.fake_lookup import CLAIM, FakeLookup, msg

HOST = "127.0.19.2"
SINK_HOST = "127.0.19.3"
QID = "4FQX9190ZZ"
XFWD = f"NAME=mx.a.example ADDR=192.0.2.7 PROTO=ESMTP HELO=mx.a.example IDENT={QID} SOURCE=REMOTE"
BOB, CAROL = "bob@b.example", "carol@b.example"
D1 = hashlib.sha256(b"one message").digest()
D2 = hashlib.sha256(b"another message").digest()


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def rows(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        return sorted(db.execute("SELECT queue_id, rcpt FROM delivered"))


async def opened(path: Path, **kw: Any) -> DeliveredStore:
    store = DeliveredStore(path, **kw)
    await store.open()
    return store


# --- the store

async def test_a_record_survives_a_reopen_in_a_file_for_this_user_only(tmp_path: Path) -> None:
    path = tmp_path / "state" / dlv.FILE_NAME
    store = await opened(path)
    assert not path.exists()                      # nothing recorded: no file made
    await store.record(QID, D1, [BOB])
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    again = await opened(path)
    try:
        assert again.may_have(QID) and not again.may_have("OTHERQID")
        assert await again.delivered(QID, D1, [BOB, CAROL]) == {BOB}
        assert await again.delivered(QID, D2, [BOB, CAROL]) == set()   # another message
        assert await again.delivered("OTHERQID", D1, [BOB]) == set()
    finally:
        await again.close()


async def test_entries_expire_after_the_ttl_in_memory_and_in_the_file(tmp_path: Path) -> None:
    path, clock = tmp_path / dlv.FILE_NAME, Clock()
    store = await opened(path, clock=clock)
    await store.record(QID, D1, [BOB])
    clock.t += dlv.TTL - 60
    assert await store.delivered(QID, D1, [BOB]) == {BOB}
    clock.t += 120
    assert not store.may_have(QID)
    assert await store.delivered(QID, D1, [BOB]) == set()
    await store.close()

    again = await opened(path, clock=clock)       # pruned on open
    try:
        assert not again.may_have(QID)
        assert rows(path) == []
    finally:
        await again.close()


async def test_the_record_is_bounded_oldest_first(tmp_path: Path) -> None:
    path, clock = tmp_path / dlv.FILE_NAME, Clock()
    store = await opened(path, clock=clock, max_entries=5)
    for i in range(8):
        clock.t += 1
        await store.record(f"Q{i}", D1, [f"r{i}@b.example"])
    assert len(rows(path)) == 5
    assert [q for q, _ in rows(path)] == ["Q3", "Q4", "Q5", "Q6", "Q7"]
    assert len(store._qids) <= 5 and len(store._mem) <= 5
    await store.close()
    again = await opened(path, clock=clock, max_entries=5)
    try:
        assert not again.may_have("Q0") and again.may_have("Q7")
        assert await again.delivered("Q7", D1, ["r7@b.example"]) == {"r7@b.example"}
    finally:
        await again.close()


async def test_a_corrupt_file_is_logged_moved_aside_and_replaced(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / dlv.FILE_NAME
    path.write_bytes(b"this is not an SQLite database\n" * 200)
    caplog.set_level(logging.INFO, "mailtalk.filter")
    store = await opened(path)                    # no exception
    try:
        assert any(r.levelno == logging.ERROR and "moved aside" in r.getMessage()
                   for r in caplog.records)
        assert path.with_name(dlv.FILE_NAME + ".corrupt").read_bytes().startswith(b"this is")
        await store.record(QID, D1, [BOB])
    finally:
        await store.close()
    assert rows(path) == [(QID, BOB)]


async def test_an_unwritable_place_is_logged_with_the_queue_id_and_memory_carries_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "plain-file").write_text("the state dir cannot be made under a file\n")
    path = tmp_path / "plain-file" / "state" / dlv.FILE_NAME
    caplog.set_level(logging.INFO, "mailtalk.filter")
    store = await opened(path)
    try:
        await store.record(QID, D1, [BOB])        # no exception
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors and errors[0].startswith(f"{QID}: cannot write")
        assert await store.delivered(QID, D1, [BOB, CAROL]) == {BOB}   # as before: memory
    finally:
        await store.close()


async def test_an_unreadable_file_at_start_is_logged_and_the_filter_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / dlv.FILE_NAME
    path.mkdir()                                  # a directory where the file should be
    caplog.set_level(logging.INFO, "mailtalk.filter")
    store = await opened(path)
    try:
        assert any(r.levelno == logging.ERROR and "cannot open" in r.getMessage()
                   for r in caplog.records)
        await store.record(QID, D1, [BOB])
        assert await store.delivered(QID, D1, [BOB]) == {BOB}
    finally:
        await store.close()


# --- the filter: real SMTP on loopback

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
