"""The lookup fast path: state in memory, one read per miss, no writes (presence_api/lookup_memo.py).

In-process aiohttp test server on 127.0.16.x (the presence-perf range) with real SQLite.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from support.presence_app import Clock, Presence, hook_keys, make_config, start_presence
from support.wait import free_port

from presence_api.lookup_memo import LookupMemo
from presence_api.server import make_app
from presence_api.service import SERVICE
from presence_api.store import Mail
from presence_api.store_schema import MIGRATIONS
from presence_api.store_sqlite import SqliteStore

ALICE = "alice@a.test"
HOST = "127.0.16.1"


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.05)


@pytest.fixture
async def p(tmp_path: Path) -> AsyncIterator[Presence]:
    pres = await start_presence(tmp_path, host=HOST, lookups_per_minute_per_client=10_000)
    await pres.add_user(ALICE)
    yield pres
    await pres.client.close()


def count_reads(memo: LookupMemo) -> dict[str, int]:
    """Counts the memo's reads of mail state from the store."""
    reads = {"n": 0}
    real = memo.store.mail_state

    async def counting(mail_id: str) -> Any:
        reads["n"] += 1
        return await real(mail_id)

    memo.store.mail_state = counting  # type: ignore[method-assign]
    return reads


async def open_memo(path: Path, **kw: Any) -> LookupMemo:
    store = SqliteStore(path)
    await store.open()
    memo = LookupMemo(store, kw.get("max_mails", 100), kw.get("no_record_seconds", 5.0), 0.1)
    await memo.open()
    return memo


async def close_memo(memo: LookupMemo) -> None:
    await memo.close()
    await memo.store.close()


def table_counts(p: Presence) -> dict[str, int]:
    """Rows per table, read by another connection (what is committed)."""
    db = sqlite3.connect(p.svc.cfg.presence.database)
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: db.execute(f"SELECT count(*) FROM {n}").fetchone()[0] for n in names}
    finally:
        db.close()


async def test_concurrent_fresh_lookups_write_nothing(p: Presence) -> None:
    """Replaces "stored before answered": links are self-verifying, a lookup stores no
    row at all. A Mail-ID newer than what memory covers is not even read; older ones
    are read once."""
    memo = p.svc.lookups
    reads = count_reads(memo)
    before = table_counts(p)
    assert "links" not in before
    mids = [p.mail_ids.issue(ALICE) for _ in range(30)]
    answers = await asyncio.gather(*(p.lookup(ALICE, m, ["bob@b.test", "Carol@C.test"])
                                     for m in mids))
    for a in answers:
        assert set(a["links"]) == {"bob@b.test", "Carol@C.test"}
    assert len({u for a in answers for u in a["links"].values()}) == 60
    assert table_counts(p) == before                 # nothing written
    assert reads["n"] == 0 and not memo.mails     # nothing read or kept
    # as if older records had not fit in memory: each Mail-ID is read once
    memo.complete_after = float("inf")
    older = [p.mail_ids.issue(ALICE) for _ in range(30)]
    read = await asyncio.gather(*(p.lookup(ALICE, m, ["bob@b.test"]) for m in older))
    assert all(set(a["links"]) == {"bob@b.test"} for a in read)
    assert reads["n"] == 30
    assert table_counts(p) == before
    # asked again (from memory, no read), the same links
    again = await p.lookup(ALICE, older[0], ["bob@b.test", "Carol@c.test"])
    assert again["links"]["bob@b.test"] == read[0]["links"]["bob@b.test"]
    assert reads["n"] == 30
    # and the same links for the same mail, whichever way it was known
    again = await p.lookup(ALICE, mids[0], ["bob@b.test", "Carol@c.test"])
    assert again["links"] == {"bob@b.test": answers[0]["links"]["bob@b.test"],
                              "Carol@c.test": answers[0]["links"]["Carol@C.test"]}
    # and each one opens, for its own recipient
    r = await p.client.get(p.link_path(answers[7]["links"]["Carol@C.test"]))
    assert r.status == 200 and "You: Carol@c.test" in await r.text()


async def test_refusals_never_touch_the_database(p: Presence) -> None:
    """A cache must not tell refusals apart: every refusal is answered from memory
    with no store thread hop and no write, whether the account exists or not, and
    whether the mail's state is in memory or not."""
    store = p.svc.store
    assert isinstance(store, SqliteStore)
    known = await p.record(ALICE, ["bob@b.test"])
    await p.lookup(ALICE, known, ["bob@b.test"])            # its state is in memory now
    hops = {"n": 0}
    real_run = store._run

    async def counting_run(fn: Callable[..., Any], *args: Any) -> Any:
        hops["n"] += 1
        return await real_run(fn, *args)

    store._run = counting_run  # type: ignore[method-assign]
    cases = [("nobody@a.test", p.mail_ids.issue("nobody@a.test")),     # unknown account
             (ALICE, "Z" * 44),                                          # forged
             (ALICE, known[:-2] + ("AA" if known[-2:] != "AA" else "BB")),  # forged, near a known
             ("nobody@a.test", known),                                   # another's Mail-ID
             (ALICE, p.mail_ids.issue("bob@a.test"))]                    # wrong account's
    bodies = set()
    for account, mid in cases:
        r = await p.client.post("/api/v1/lookup", json={
            "account": account, "mail_id": mid, "recipients": ["bob@b.test"]})
        bodies.add(await r.read())
    assert hops["n"] == 0 and len(bodies) == 1
    # opening a link does reach the store: the count can fail
    link = (await p.lookup(ALICE, known, ["bob@b.test"]))["links"]["bob@b.test"]
    assert hops["n"] == 0
    assert (await p.client.get(p.link_path(link))).status == 200
    assert hops["n"] >= 1


async def test_accounts_changed_by_another_process_reach_lookups(p: Presence) -> None:
    mid_bob = p.mail_ids.issue("bob@a.test")
    assert (await p.lookup("bob@a.test", mid_bob, []))["status"] == "unknown"
    other = SqliteStore(p.svc.cfg.presence.database)       # as `mailtalk user add` does
    await other.open()
    try:
        assert await other.create_account("bob@a.test", "x", time.time())

        async def bob_known() -> bool:
            return (await p.lookup("bob@a.test", mid_bob, []))["status"] == "offline"
        await eventually(bob_known)
        assert await other.remove_account(ALICE)
        mid = p.mail_ids.issue(ALICE)

        async def alice_gone() -> bool:
            return (await p.lookup(ALICE, mid, []))["status"] == "unknown"
        await eventually(alice_gone)
    finally:
        await other.close()


async def test_mode_is_read_from_memory_and_follows_changes(p: Presence) -> None:
    memo = p.svc.lookups
    await memo.set_mode(ALICE, "busy")
    ctx = memo.context(ALICE, "")
    assert ctx.mode == "busy" and ctx.mail is None
    assert memo.context("nobody@a.test", "").mode is None


async def test_evicted_mail_state_is_read_back_with_its_record(tmp_path: Path) -> None:
    """With room for one mail in memory, the record (not a stale stub) still decides."""
    port = free_port(HOST)
    cfg = make_config(tmp_path, f"http://{HOST}:{port}", lookups_per_minute_per_client=1000)
    store = SqliteStore(cfg.presence.database)
    clock = Clock()
    app = make_app(cfg, store=store, clock=clock, site_key=b"k" * 32, discoverer=hook_keys(cfg))
    memo = app[SERVICE].lookups
    memo.max_mails = 1
    client = TestClient(TestServer(app, host=HOST, port=port))
    await client.start_server()
    try:
        p = Presence(client, clock, b"k" * 32)
        await p.add_user(ALICE)
        first = await p.record(ALICE, ["bob@b.test"])
        a = await p.lookup(ALICE, first, ["bob@b.test", "eve@e.test"])
        assert set(a["links"]) == {"bob@b.test"}
        await p.record(ALICE, ["x@x.test"])                              # evicts `first`
        assert first not in memo.mails and len(memo.mails) == 1
        assert not memo.has_no_record(first)      # it must be read, not guessed
        b = await p.lookup(ALICE, first, ["bob@b.test", "eve@e.test"])
        assert b["links"] == {"bob@b.test": a["links"]["bob@b.test"]}
        assert client.server.app[SERVICE].store is store
    finally:
        await client.close()


async def test_no_record_is_remembered_only_briefly(tmp_path: Path) -> None:
    """A record stored by another process after a lookup's read is seen once the
    "no record yet" answer has aged (the outbox is asynchronous)."""
    memo = await open_memo(tmp_path / "s.sqlite3", no_record_seconds=0.3)
    memo.complete_after = float("inf")       # as if records had not fit in memory
    other = SqliteStore(tmp_path / "s.sqlite3")
    await other.open()
    try:
        mid = "M" * 44
        first = await memo.mail_state(mid, ALICE)
        assert first.allowed is None and first.allows("eve@e.test")
        assert memo.context(ALICE, mid).mail == first      # remembered
        assert await other.put_mail(Mail(mid, ALICE, True, recipients=("Bob@b.test",)))

        async def aged() -> bool:
            return memo.context(ALICE, mid).mail is None
        await eventually(aged, timeout=5)
        again = await memo.mail_state(mid, ALICE)
        assert again.allowed == frozenset({"bob@b.test"}) and not again.allows("eve@e.test")
        # a record keeps its place in memory (no ageing)
        assert memo.context(ALICE, mid).mail == again
        assert memo.mails[mid][1] == 0.0
    finally:
        await other.close()
        await close_memo(memo)


async def test_a_record_racing_a_read_is_not_hidden_by_a_stale_answer(tmp_path: Path) -> None:
    """The read runs first (no record), the record is stored right after it: the read's
    answer must not stay in memory, or eve would keep getting links."""
    memo = await open_memo(tmp_path / "s.sqlite3")
    memo.complete_after = float("inf")       # as if records had not fit in memory
    reads = count_reads(memo)
    try:
        mid = "M" * 44
        read = asyncio.ensure_future(memo.mail_state(mid, ALICE))
        while reads["n"] == 0:                      # the read is in the store's thread
            await asyncio.sleep(0)
        assert await memo.put_mail(Mail(mid, ALICE, True, recipients=("bob@b.test",)))
        stale = await read
        assert stale.allowed is None                # it did read before the record
        state = memo.context(ALICE, mid).mail
        assert state is not None and state.allowed == frozenset({"bob@b.test"})
        assert not state.allows("eve@e.test")
    finally:
        await close_memo(memo)


async def test_a_repeated_record_keeps_its_state(tmp_path: Path) -> None:
    """The outbox may post a record twice (a lost answer): the second post must not
    make the memo forget who the recipients are."""
    memo = await open_memo(tmp_path / "s.sqlite3")
    try:
        mid = "M" * 44
        mail = Mail(mid, ALICE, True, recipients=("bob@b.test",))
        assert await memo.put_mail(mail)
        assert not await memo.put_mail(mail)        # already there
        state = memo.context(ALICE, mid).mail
        assert state is not None and state.allowed == frozenset({"bob@b.test"})
    finally:
        await close_memo(memo)


async def test_newest_records_are_loaded_at_start(tmp_path: Path) -> None:
    """After a restart, lookups know the newest records without a read; a Mail-ID
    older than the newest record that did not fit is read."""
    path = tmp_path / "s.sqlite3"
    ids = MailIdsForTest()
    first = SqliteStore(path)
    await first.open()
    try:
        for i, mid in enumerate(ids.mids):
            await first.put_mail(Mail(mid, ALICE, True, recipients=("bob@b.test",),
                                      created_at=ids.t0 + 100 * i))
    finally:
        await first.close()
    memo = await open_memo(path, max_mails=2)
    reads = count_reads(memo)
    try:
        assert list(memo.mails) == ids.mids[1:]           # the two newest, oldest first
        assert memo.complete_after == ids.t0 + 300        # created_at left out + skew
        newest = memo.context(ALICE, ids.mids[2]).mail
        assert newest is not None and not newest.allows("eve@e.test")
        assert not memo.has_no_record(ids.mids[0])        # issued at t0: read it
        state = await memo.mail_state(ids.mids[0], ALICE)
        assert reads["n"] == 1 and not state.allows("eve@e.test")
        assert memo.has_no_record(ids.fresh)              # issued later: no read
        assert (await memo.mail_state(ids.fresh, ALICE)).allowed is None
        assert reads["n"] == 1
    finally:
        await close_memo(memo)


class MailIdsForTest:
    """Three Mail-IDs issued 100 s apart from t0, and one issued 1000 s after."""

    def __init__(self) -> None:
        from mailtalk.mailid import MailIds
        self.t0 = float(int(time.time()) - 5000)
        now = [self.t0]
        m = MailIds(b"k" * 32, 30, clock=lambda: now[0])
        self.mids = []
        for i in range(3):
            now[0] = self.t0 + 100 * i
            self.mids.append(m.issue(ALICE))
        now[0] = self.t0 + 1000
        self.fresh = m.issue(ALICE)


async def test_schema_2_drops_link_rows_and_unopened_placeholders(tmp_path: Path) -> None:
    """A version-1 database (links stored by lookups) is migrated: the link table goes,
    placeholder mails nobody opened go, a placeholder with a room stays."""
    path = tmp_path / "v1.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.executemany("INSERT INTO mails (mail_id, account, recorded, created_at) "
                   "VALUES (?, ?, ?, 1.0)", [("unopened", ALICE, 0), ("opened", ALICE, 0),
                                             ("recorded", ALICE, 1)])
    db.execute("INSERT INTO links VALUES ('h', 'unopened', 'bob@b.test', 1.0, 9.0)")
    db.execute("INSERT INTO members VALUES ('opened', 'bob@b.test', 2.0)")
    db.commit()
    db.close()
    store = SqliteStore(path)
    await store.open()
    try:
        assert await store.schema_version() == len(MIGRATIONS) >= 2
        assert await store.get_mail("unopened") is None
        assert await store.get_mail("opened") is not None
        assert await store.get_mail("recorded") is not None
        tables = await store._run(lambda: [r[0] for r in store.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")])
        assert "links" not in tables
    finally:
        await store.close()
