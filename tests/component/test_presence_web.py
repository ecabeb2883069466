"""The HTML side: log-in, cookies, CSRF, failed-login limit, headers, escaping, storage."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from mailtalk.config import ConfigError
from presence_api.auth import PRE_COOKIE, SESSION_COOKIE
from presence_api.server import make_app, open_store
from presence_api.store_sqlite import MIGRATIONS, SqliteStore
from support.presence_app import PASSWORD, Presence, csrf_of, make_config, start_presence

ALICE = "alice@a.test"
XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


@pytest.fixture
async def p(tmp_path: Path) -> AsyncIterator[Presence]:
    pres = await start_presence(tmp_path, login_attempts_per_minute=3)
    await pres.add_user(ALICE)
    yield pres
    await pres.client.close()


def set_cookie_line(resp, name: str) -> str:  # type: ignore[no-untyped-def]
    for v in resp.headers.getall("Set-Cookie", []):
        if v.startswith(name + "="):
            return v
    raise AssertionError(f"no Set-Cookie for {name}: {resp.headers.getall('Set-Cookie', [])}")


async def test_pages_need_a_session(p: Presence) -> None:
    r = await p.client.get("/", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/login"


async def test_login_sets_a_hardened_session_cookie(p: Presence) -> None:
    r = await p.client.get("/login")
    csrf = csrf_of(await r.text())
    r = await p.client.post("/login", data={"csrf": csrf, "account": "Alice@A.test",
                                            "password": PASSWORD}, allow_redirects=False)
    assert r.status == 303
    line = set_cookie_line(r, SESSION_COOKIE).lower()
    assert "httponly" in line and "samesite=lax" in line and "secure" not in line
    r = await p.client.get("/")
    assert r.status == 200 and ALICE in await r.text()


async def test_secure_cookie_behind_https(tmp_path: Path) -> None:
    p = await start_presence(tmp_path, public_url="https://chat.a.test")
    try:
        await p.add_user(ALICE)
        r = await p.client.get("/login")
        assert "secure" in set_cookie_line(r, PRE_COOKIE).lower()
    finally:
        await p.client.close()


async def test_login_form_needs_its_csrf_token(p: Presence) -> None:
    await p.client.get("/login")
    r = await p.client.post("/login", data={"account": ALICE, "password": PASSWORD},
                            allow_redirects=False)
    assert r.status == 403
    r = await p.client.post("/login", data={"csrf": "0" * 64, "account": ALICE,
                                            "password": PASSWORD}, allow_redirects=False)
    assert r.status == 403
    assert SESSION_COOKIE not in {c.key for c in p.client.session.cookie_jar}


async def test_failed_logins_are_rate_limited(p: Presence) -> None:
    r = await p.client.get("/login")
    csrf = csrf_of(await r.text())
    for _ in range(3):
        r = await p.client.post("/login", data={"csrf": csrf, "account": ALICE,
                                                "password": "wrong password"})
        assert r.status == 401
    # now even the right password waits
    r = await p.client.post("/login", data={"csrf": csrf, "account": ALICE,
                                            "password": PASSWORD}, allow_redirects=False)
    assert r.status == 429
    p.clock.advance(61)
    r = await p.client.post("/login", data={"csrf": csrf, "account": ALICE,
                                            "password": PASSWORD}, allow_redirects=False)
    assert r.status == 303


async def test_logout_and_status_forms_need_csrf(p: Presence) -> None:
    await p.login(ALICE)
    csrf = csrf_of(await (await p.client.get("/")).text())
    r = await p.client.post("/status", data={"mode": "busy"}, allow_redirects=False)
    assert r.status == 403
    r = await p.client.post("/status", data={"mode": "busy", "csrf": csrf},
                            allow_redirects=False)
    assert r.status == 303
    assert (await p.svc.store.get_account(ALICE)).mode == "busy"  # type: ignore[union-attr]
    r = await p.client.post("/logout", data={}, allow_redirects=False)
    assert r.status == 403
    assert (await p.client.get("/", allow_redirects=False)).status == 200
    r = await p.client.post("/logout", data={"csrf": csrf}, allow_redirects=False)
    assert r.status == 303
    assert (await p.client.get("/", allow_redirects=False)).status == 303


async def test_security_headers(p: Presence) -> None:
    r = await p.client.get("/login")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"


async def test_every_value_is_escaped(p: Presence) -> None:
    mid = await p.record(ALICE, ["bob@b.test"], subject=XSS, body=XSS)
    url = (await p.lookup(ALICE, mid, ["bob@b.test"]))["links"]["bob@b.test"]
    for path in (p.link_path(url),):
        html = await (await p.client.get(path)).text()
        assert "<script>window" not in html and "<img src=x" not in html
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    await p.svc.store.join(mid, "bob@b.test", p.clock())     # Bob opened it: listed on "/"
    await p.login(ALICE)
    for path in ("/", f"/m/{mid}"):
        html = await (await p.client.get(path)).text()
        assert "<script>window" not in html and "<img src=x" not in html
        assert "&lt;script&gt;" in html


async def test_schema_is_created_versioned_and_not_rerun(tmp_path: Path) -> None:
    db = tmp_path / "p.sqlite3"
    s = SqliteStore(db)
    await s.open()
    assert await s.schema_version() == len(MIGRATIONS)
    await s.create_account(ALICE, "h", 0.0)
    await s.close()
    assert db.stat().st_mode & 0o777 == 0o600            # password hashes: owner only
    s = SqliteStore(db)
    await s.open()                       # a second start migrates nothing, keeps data
    assert await s.schema_version() == len(MIGRATIONS)
    assert [a.account for a in await s.list_accounts()] == [ALICE]
    await s.close()


def test_database_urls(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, database=f"sqlite:///{tmp_path}/x.sqlite3")
    store = open_store(cfg)
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "x.sqlite3"
    from presence_api.store_sqlite import sqlite_path
    assert sqlite_path("sqlite:///var/lib/mailtalk/p.db") == Path("/var/lib/mailtalk/p.db")
    assert sqlite_path("/var/lib/mailtalk/p.db") == Path("/var/lib/mailtalk/p.db")
    from presence_api.store_pg import PgStore
    cfg = make_config(tmp_path, database="postgresql://u:p@db.a.test/mailtalk")
    assert isinstance(open_store(cfg), PgStore)


async def test_expired_sessions_are_refused_and_purged(p: Presence) -> None:
    await p.login(ALICE)
    assert (await p.client.get("/", allow_redirects=False)).status == 200
    p.clock.advance(p.svc.cfg.presence.session_lifetime_hours * 3600 + 1)
    assert (await p.client.get("/", allow_redirects=False)).status == 303
    await p.login(ALICE)
    p.clock.advance(p.svc.cfg.presence.session_lifetime_hours * 3600 + 1)
    assert await p.svc.store.purge_sessions(p.clock()) == 1


def test_access_log_never_shows_a_link_token(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from presence_api.server import AccessLogger
    token = "Wnf_rcCRbauthUna1ICXdOvc2NhyWRvx"
    logger = AccessLogger(logging.getLogger("aiohttp.access"), "")
    with caplog.at_level(logging.INFO, "aiohttp.access"):
        for path in (f"/c/{token}", f"/ws/c/{token}"):
            logger.log(make_mocked_request("GET", path), web.Response(), 0.002)
    assert token not in caplog.text
    assert "GET /c/… 200" in caplog.text and "GET /ws/c/… 200" in caplog.text


async def test_failures_from_one_address_do_not_lock_out_another(p: Presence) -> None:
    """Ten wrong passwords for alice from one address; her correct password from another
    address still logs in (the limit is per account and client address)."""
    from aiohttp import ClientSession, CookieJar, TCPConnector
    r = await p.client.get("/login")
    csrf = csrf_of(await r.text())
    for _ in range(10):
        await p.client.post("/login", data={"csrf": csrf, "account": ALICE,
                                            "password": "wrong password"})
    r = await p.client.post("/login", data={"csrf": csrf, "account": ALICE,
                                            "password": PASSWORD}, allow_redirects=False)
    assert r.status == 429                                   # that address: slowed down
    other = ClientSession(base_url=str(p.client.make_url("/")),
                          cookie_jar=CookieJar(unsafe=True),
                          connector=TCPConnector(local_addr=("127.0.12.77", 0)))
    try:
        r = await other.get("/login")
        csrf2 = csrf_of(await r.text())
        r = await other.post("/login", data={"csrf": csrf2, "account": ALICE,
                                             "password": PASSWORD}, allow_redirects=False)
        assert r.status == 303
    finally:
        await other.close()


@pytest.mark.parametrize("trusted", [True, False])
async def test_behind_a_trusted_proxy_the_forwarded_address_counts(tmp_path, trusted: bool
                                                                   ) -> None:
    """Behind `[presence] trusted_proxies`, X-Forwarded-For names the client: failures
    from one forwarded address do not lock out another. From any other peer the header
    is ignored."""
    kw = {"trusted_proxies": ["127.0.0.0/8"]} if trusted else {}      # the test client
    q = await start_presence(tmp_path, login_attempts_per_minute=3, **kw)
    try:
        await q.add_user(ALICE)
        r = await q.client.get("/login")
        csrf = csrf_of(await r.text())

        async def attempt(ip: str, password: str) -> int:
            r = await q.client.post("/login", data={"csrf": csrf, "account": ALICE,
                                                    "password": password},
                                    headers={"X-Forwarded-For": f"192.0.2.9, {ip}"},
                                    allow_redirects=False)
            return r.status
        for _ in range(3):
            assert await attempt("10.0.0.1", "wrong password") == 401
        assert await attempt("10.0.0.1", PASSWORD) == 429
        assert await attempt("10.0.0.2", PASSWORD) == (303 if trusted else 429)
    finally:
        await q.client.close()
