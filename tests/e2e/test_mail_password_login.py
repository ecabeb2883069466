"""One password for mail and chat: the chat's log-in form checked by a real private
Dovecot (support/dovecot.py: passwd-file users, loopback), over IMAP
(`[presence] auth = "imap"`) and over its auth-client socket (`auth = "dovecot"`).
"""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from presence_api.auth import EXTERNAL
from support.dovecot import Dovecot, unavailable
from support.presence_app import Presence, browser, csrf_of, start_presence

HOST = "127.0.24.1"
DOVECOT = "127.0.24.60"
ALICE, EVE = "alice@a.test", "eve@elsewhere.test"
MAIL_PASSWORD = "alice-mail-pw-1"


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    if why := unavailable():
        pytest.skip(why)
    d = Dovecot(tmp_path_factory.mktemp("dovecot"), {ALICE: MAIL_PASSWORD, EVE: "eve-pw-1234"},
                address=DOVECOT).start()
    yield d
    d.stop()


@pytest.fixture(params=["imap", "dovecot"])
async def p(request: pytest.FixtureRequest, dovecot: Dovecot, tmp_path: Path
            ) -> AsyncIterator[Presence]:
    where = ({"imap": f"imap://{DOVECOT}:{dovecot.imap_port}"} if request.param == "imap"
             else {"dovecot_auth": f"unix:{dovecot.auth_socket}"})
    pres = await start_presence(tmp_path, host=HOST, auth=request.param,
                                login_attempts_per_minute=3, **where)
    yield pres
    await pres.client.close()


async def log_in(p: Presence, account: str, password: str) -> tuple[int, str]:
    """The log-in form as a browser posts it, in a browser of its own."""
    async with browser(p) as b:
        csrf = csrf_of(await (await b.get("/login")).text())
        r = await b.post("/login", data={"csrf": csrf, "account": account,
                                         "password": password}, allow_redirects=False)
        return r.status, await r.text()


async def test_the_mail_password_logs_in_and_makes_the_account(p: Presence) -> None:
    assert await p.svc.store.get_account(ALICE) is None
    status, page = await log_in(p, ALICE, "not the password")
    assert status == 401 and "Wrong account or password." in page
    assert await p.svc.store.get_account(ALICE) is None
    status, _ = await log_in(p, ALICE, MAIL_PASSWORD)
    assert status == 303
    acct = await p.svc.store.get_account(ALICE)
    assert acct is not None and acct.password_hash == EXTERNAL     # no copy of it here
    assert p.svc.lookups.modes.get(ALICE) == "auto"               # lookups know it at once
    assert (await log_in(p, ALICE, MAIL_PASSWORD))[0] == 303       # and again


async def test_only_this_sites_addresses_are_asked(p: Presence, dovecot: Dovecot) -> None:
    """eve's password is right at that mail server, but elsewhere.test is not a domain of
    this site: refused as a wrong password, and the mail server never hears of it."""
    status, _ = await log_in(p, EVE, "eve-pw-1234")
    assert status == 401
    assert EVE not in dovecot.log_tail(200)


async def test_a_mail_server_that_is_down_means_try_again_not_a_lock_out(
        p: Presence, dovecot: Dovecot) -> None:
    dovecot.stop()
    try:
        for _ in range(5):                 # more than login_attempts_per_minute (3)
            status, page = await log_in(p, ALICE, MAIL_PASSWORD)
            assert status == 503 and "try again in a minute" in page, page
    finally:
        dovecot.start()
    status, _ = await log_in(p, ALICE, MAIL_PASSWORD)
    assert status == 303                   # not blocked by the attempts while it was down
