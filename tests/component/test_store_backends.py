"""One contract, two back ends: every `Store` method gives the same answers on SQLite
(a file) and on PostgreSQL (a private server from Debian's package, support/postgres.py),
and the presence app itself runs on PostgreSQL: a record, a lookup, a link, a chat."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from presence_api.store import Mail, Store
from presence_api.store_pg import PgStore
from presence_api.store_sqlite import SqliteStore
from support.postgres import Postgres, unavailable
from support.presence_app import start_presence
from support.presence_ws import links_for, next_of, open_link, sender_ws

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    if why := unavailable():
        pytest.skip(why)
    pg = Postgres().start()
    yield pg
    pg.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store = (SqliteStore(tmp_path / "p.sqlite3") if request.param == "sqlite"
                else PgStore(request.getfixturevalue("postgres").url))
    await s.open()
    yield s
    await s.close()


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


async def test_accounts_and_sessions(store: Store) -> None:
    a = unique("a") + "@a.test"
    v0 = await store.data_version()
    assert await store.create_account(a, "h1", NOW) and not await store.create_account(a, "x", NOW)
    assert (await store.get_account(a)).password_hash == "h1"   # type: ignore[union-attr]
    assert a in [x.account for x in await store.list_accounts()]
    await store.set_mode(a, "busy")
    assert (await store.account_modes())[a] == "busy"
    await store.create_session("t" + a, a, NOW + 60)
    assert await store.get_session("t" + a, NOW) == a
    assert await store.set_password(a, "h2")
    assert await store.get_session("t" + a, NOW) is None          # a new password ends it
    await store.create_session("u" + a, a, NOW + 60)
    assert await store.get_session("u" + a, NOW + 61) is None     # expired
    assert await store.remove_account(a) and await store.get_account(a) is None
    assert isinstance(v0, int)


async def test_mails_rooms_reads_purge_and_digests(store: Store) -> None:
    mid, sender = unique("m"), unique("s") + "@a.test"
    early = await store.bind_mail(mid, sender, NOW)               # a link before the record
    assert not early.recorded and (await store.mail_state(mid)).allowed is None  # type: ignore[union-attr]
    record = Mail(mid, sender, True, "<x@a.test>", "Subj \x00", "2026-11-29T07:00:00Z",
                  ("bob@b.test",), "text", "Q1", NOW, {"bob@b.test": "Bob"})
    assert await store.put_mail(record) and not await store.put_mail(record)
    got = await store.get_mail(mid)
    assert got is not None and got.recorded and got.names == {"bob@b.test": "Bob"}
    assert got.subject.startswith("Subj ")                         # NUL made harmless
    state = await store.mail_state(mid)
    assert state is not None and state.allows("BOB@b.test") and not state.allows("eve@b.test")
    assert mid in [m for m, _, _ in await store.recent_mail_states(1000)]

    assert await store.join(mid, "bob@b.test", NOW) and not await store.join(mid, "bob@b.test", NOW)
    assert await store.members(mid) == ["bob@b.test"]
    m1 = await store.add_message(mid, "bob@b.test", "hi", NOW + 1)
    m2 = await store.add_message(mid, sender, "hello", NOW + 2)
    assert [m.text for m in await store.messages(mid, 10)] == ["hi", "hello"] and m2.id > m1.id
    (conv,) = [c for c in await store.conversations(sender, 50) if c.mail.mail_id == mid]
    assert conv.unread == 1 and conv.members == ("bob@b.test",) and conv.last_text == "hello"
    await store.mark_read(mid, sender, m1.id)
    await store.mark_read(mid, sender, 0)                          # never goes back
    (conv,) = [c for c in await store.conversations(sender, 50) if c.mail.mail_id == mid]
    assert conv.unread == 0

    assert (mid, m2.id) in await store.quiet_rooms(NOW + 100, NOW - 100)
    reads, done = await store.digest_marks(mid)
    assert reads == {sender: m1.id} and done == {}
    assert await store.claim_digest(mid, "bob@b.test", m2.id, NOW + 100, NOW)
    assert not await store.claim_digest(mid, "bob@b.test", m2.id, NOW + 101, NOW)   # taken
    await store.digest_sent(mid, "bob@b.test", m2.id)
    assert (await store.digest_marks(mid))[1] == {"bob@b.test": m2.id}
    await store.set_digests("Bob@b.test", False)
    assert await store.digests_off(["bob@b.test", "x@b.test"]) == {"bob@b.test"}
    await store.set_digests("bob@b.test", True)
    assert await store.digests_off(["bob@b.test"]) == set()

    purged: list[str] = []
    while ids := await store.purge_mails(NOW + 1.5, 100):   # a message since: the chat stays
        purged += ids
    assert mid not in purged
    while ids := await store.purge_mails(NOW + 1000, 100):
        purged += ids
    assert mid in purged and await store.get_mail(mid) is None


async def test_the_presence_app_runs_on_postgresql(postgres: Postgres, tmp_path: Path) -> None:
    p = await start_presence(tmp_path, host="127.0.27.1", database=postgres.url)
    try:
        await p.add_user("alice@a.test")
        mid, links = await links_for(p, ["bob@b.test"], subject="On PostgreSQL")
        bob = await open_link(p, links["bob@b.test"])
        alice = await sender_ws(p)
        await alice.send_json({"type": "join", "mail_id": mid})
        await next_of(alice, "room")
        await bob.send_json({"type": "send", "mail_id": mid, "text": "from bob"})
        assert (await next_of(alice, "message"))["text"] == "from bob"
        r = await p.client.get("/readyz")
        assert r.status == 200
        await alice.close()
        await bob.close()
    finally:
        await p.client.close()


async def test_postgresql_down_then_back(postgres: Postgres, tmp_path: Path) -> None:
    """While PostgreSQL is stopped: /readyz says so (503); lookups are answered from
    memory (every record fits in it here, so an unknown Mail-ID needs no read), at
    once; the service stays up and is whole again when PostgreSQL is back."""
    import time
    p = await start_presence(tmp_path, host="127.0.27.2", database=postgres.url)
    try:
        await p.add_user("alice@a.test")
        known = await p.record("alice@a.test", ["bob@b.test"])
        postgres.stop()
        try:
            r = await p.client.get("/readyz")
            assert r.status == 503 and "database" in await r.json()
            assert (await p.lookup("alice@a.test", known, ["bob@b.test"]))["status"] == "offline"
            started = time.monotonic()
            from mailtalk.mailid import MailIds
            old = MailIds(p.key, 30, clock=lambda: p.clock() - 86400).issue("alice@a.test")
            body = {"account": "alice@a.test", "mail_id": old, "recipients": ["bob@b.test"]}
            r = await p.client.post("/api/v1/lookup", json=body)
            assert r.status == 200 and time.monotonic() - started < 5
        finally:
            postgres.start()
        r = await p.client.get("/readyz")
        assert r.status == 200
        assert (await p.lookup("alice@a.test", known, ["bob@b.test"]))["status"] == "offline"
    finally:
        await p.client.close()
