"""The filter's durable record of partial deliveries (milter/delivered.py): the store
alone, a real SQLite file in tmp_path and an injected clock; no sockets."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from mailtalk_milter import delivered as dlv
from mailtalk_milter.delivered import DeliveredStore

QID = "4FQX9190ZZ"
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
