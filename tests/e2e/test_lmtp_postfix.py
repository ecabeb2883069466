"""The LMTP hook end to end on Postfix, every part real.

a.test sends as in the two-site tests (support/two_sites.py: SASL submission through
the sending milter, mailtalk's three services). b.test delivers its mailboxes over
LMTP (deploy/postfix/receiver-lmtp-main.cf): Postfix's lmtp(8) -> `mailtalk filter` in
`[filter] mode = "lmtp"` -> a private Dovecot (support/dovecot.py), whose mailboxes
the tests read over IMAP, as a mail client would.

Dovecot users at b.test: bob, carol, tmp (whose delivery is made to fail on demand).
Any other address of b.test passes Postfix and is refused by Dovecot.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from typing import Iterator

import pytest

from support.dovecot import Dovecot, unavailable
from support.mailtalk import MailtalkService, run_mailtalk
from support.postfix import header_values
from support.postfix_mailbox import online
from support.smtp import make_message, smtp_send
from support.two_sites import ALICE, B_MX, BOB, CAROL, World, two_sites, world_dir
from support.wait import wait_for

log = logging.getLogger("tests.lmtp")

TMP, NOBODY = "tmp@b.test", "nobody@b.test"


@pytest.fixture(scope="module")
def site(request: pytest.FixtureRequest) -> Iterator[tuple[World, Dovecot]]:
    if why := unavailable():
        pytest.skip(why)
    with world_dir(request) as base:
        dovecot = Dovecot(base, {BOB: "bob-imap-pw-1", CAROL: "carol-imap-pw-1",
                                 TMP: "tmp-imap-pw-1"}).start()
        try:
            with two_sites(base, b_lmtp_next=dovecot.lmtp) as w:
                yield w, dovecot
        finally:
            dovecot.stop()


def copies(w: World, d: Dovecot, rcpt: str, mid: str, count: int = 1) -> list[bytes]:
    """The copies of `mid` in rcpt's mailbox once there are `count` (queues flushed)."""
    def got() -> list[bytes] | None:
        found = d.copies(rcpt, mid)
        if len(found) >= count:
            return found
        for mta in (w.a, w.b):
            if mta.queue():
                mta.flush()
        return None
    return wait_for(got, timeout=30, interval=0.3, what=f"{count} copy of {mid} for {rcpt}")


def qid_of(w: World, mid: str) -> str:
    return w.b.wait_log(rf"(\w+): message-id={re.escape(mid)}", timeout=30).group(1)


def test_check_passes_at_the_lmtp_site(site: tuple[World, Dovecot]) -> None:
    w, _ = site
    r = run_mailtalk(w.b_filter.config_path, "check", timeout=60,
                     env={**os.environ, "MAIL_CONFIG": str(w.b.config_dir)})
    assert r.returncode == 0 and "FAIL" not in r.stdout, r.stdout + r.stderr
    assert "ok   LMTP hook answers on" in r.stdout, r.stdout
    assert "ok   LMTP server answers on" in r.stdout, r.stdout
    assert "virtual_transport = lmtp:inet:" in r.stdout and "delivers to the LMTP hook" in r.stdout


def test_each_mailbox_holds_its_own_copy_link_and_notice(site: tuple[World, Dovecot]) -> None:
    w, d = site
    mid = "<lmtp-pair@a.test>"
    w.send([BOB, CAROL], "Team lunch", mid)
    links = {}
    for rcpt in (BOB, CAROL):
        (raw,) = copies(w, d, rcpt, mid)
        ((state, params),) = online(raw)              # that recipient's own header
        assert state in ("yes", "no") and params["account"] == ALICE, params
        links[rcpt] = params["chat"].strip("<>")
        assert links[rcpt].encode() in raw.split(b"\r\n\r\n", 1)[1]      # the notice
    assert links[BOB] != links[CAROL]
    qid = qid_of(w, mid)
    w.b.wait_log(rf"{qid}: to=<{re.escape(CAROL)}>.*status=sent", timeout=30)
    assert re.search(rf"{qid}: X-Sender-Online for {re.escape(ALICE)}: .* to 2 recipient\(s\); "
                     rf"delivered to 2 of 2$", w.b_filter.log(), re.M), w.b_filter.log_tail()


def test_a_refused_recipient_gets_the_mailbox_servers_reply(site: tuple[World, Dovecot]
                                                            ) -> None:
    w, d = site
    mid = "<lmtp-refused@a.test>"
    w.send([BOB, NOBODY], "One of you does not exist", mid)
    assert len(copies(w, d, BOB, mid)) == 1
    qid = qid_of(w, mid)
    line = w.b.wait_log(rf"{qid}: to=<{re.escape(NOBODY)}>.*", timeout=30).group(0)
    assert "status=bounced" in line and "550 5.1.1" in line and "User doesn't exist" in line, line
    assert "mailtalk" not in line.split("said:", 1)[-1]      # Dovecot's reply, not ours


def test_a_temporary_failure_defers_that_recipient_only(site: tuple[World, Dovecot]) -> None:
    w, d = site
    mid = "<lmtp-tempfail@a.test>"
    d.make_tempfail(TMP)
    try:
        w.send([BOB, TMP], "Try again, tmp", mid)
        assert len(copies(w, d, BOB, mid)) == 1
        qid = qid_of(w, mid)
        line = w.b.wait_log(rf"{qid}: to=<{re.escape(TMP)}>.*status=deferred.*", 30).group(0)
        assert "451 4.2.0" in line, line
    finally:
        d.clear_tempfail(TMP)
    assert len(copies(w, d, TMP, mid)) == 1              # the retry delivers tmp
    w.b.wait_queue_empty()
    assert len(d.copies(BOB, mid)) == 1                  # and bob only once


def test_mailbox_server_down_defers_all_then_delivers_once(site: tuple[World, Dovecot]) -> None:
    w, d = site
    mid = "<lmtp-down@a.test>"
    d.stop()
    try:
        w.send([BOB, CAROL], "While Dovecot is down", mid)
        qid = qid_of(w, mid)
        for rcpt in (BOB, CAROL):
            line = w.b.wait_log(rf"{qid}: to=<{re.escape(rcpt)}>.*status=deferred.*",
                                timeout=30).group(0)
            assert "451 4.4.2" in line and "LMTP next hop" in line, line
    finally:
        d.start()
    for rcpt in (BOB, CAROL):
        assert len(copies(w, d, rcpt, mid)) == 1
    w.b.wait_queue_empty()
    assert "status=bounced" not in "\n".join(
        x for x in w.b.maillog().splitlines() if qid in x)


def _burst(w: World, tag: str, n: int = 30) -> list[str]:
    """n mails to bob and carol, straight to b.test's port 25 (no claim: fast)."""
    mids = [f"<lmtp-{tag}-{i}@a.test>" for i in range(n)]
    for i, mid in enumerate(mids):
        smtp_send(B_MX, w.b.smtp_port, make_message(to=[BOB, CAROL], subject=f"{tag} {i}",
                                                    message_id=mid),
                  sender="mallory@e.test", rcpts=[BOB, CAROL])
    return mids


def _stop_hook_during(w: World, sig: signal.Signals, done_before: int) -> None:
    """Send `sig` to b.test's hook once it delivered a few more mails; start another."""
    proc = w.b_filter.proc
    assert proc is not None
    wait_for(lambda: w.b_filter.log().count("delivered to 2 of 2") >= done_before + 5,
             timeout=30, what="a few deliveries before the signal")
    proc.send_signal(sig)
    proc.wait(20)
    w.b_filter = MailtalkService(w.base, w.b_cfg, subcommand="filter",
                                 name=f"b-filter-{sig.name}")
    w.b_filter.start()


def _count(w: World, d: Dovecot, mids: list[str]) -> int:
    """Every mail in both mailboxes at least once; the number of extra copies."""
    extra = 0
    for mid in mids:
        for rcpt in (BOB, CAROL):
            got = copies(w, d, rcpt, mid)
            assert all(header_values(m, "Message-ID") == [mid] for m in got)
            extra += len(got) - 1
    w.b.wait_queue_empty()
    return extra


def test_hook_stopped_in_a_burst_delivers_everything_exactly_once(
        site: tuple[World, Dovecot]) -> None:
    """SIGTERM mid-burst: the mails in flight finish, the others wait in Postfix's queue."""
    w, d = site
    before = w.b_filter.log().count("delivered to 2 of 2")
    mids = _burst(w, "term")
    _stop_hook_during(w, signal.SIGTERM, before)
    assert _count(w, d, mids) == 0


def test_hook_killed_in_a_burst_loses_nothing(site: tuple[World, Dovecot]) -> None:
    """SIGKILL mid-burst: every mail reaches both mailboxes once the hook is back. A
    copy Dovecot had taken when the hook died comes twice (LMTP's own window:
    docs/receiving.md); counted and logged, never lost."""
    w, d = site
    mids = _burst(w, "kill")
    _stop_hook_during(w, signal.SIGKILL, 0)
    twice = _count(w, d, mids)
    log.info("hook killed in a burst of %d mails x 2 recipients: %d duplicate(s)",
             len(mids), twice)
    assert "status=bounced" not in w.b.maillog().split("lmtp-kill-0")[-1]


def test_a_bounce_reaches_the_mailbox(site: tuple[World, Dovecot]) -> None:
    """The null sender (bounces, auto-replies, digests) goes on as MAIL FROM:<>, which
    Dovecot insists on (it refuses "<<>>" as an invalid path)."""
    w, d = site
    mid = "<lmtp-bounce@a.test>"
    smtp_send(B_MX, w.b.smtp_port, make_message(from_="MAILER-DAEMON@a.test", to=[BOB],
                                                subject="Undelivered Mail", message_id=mid),
              sender="", rcpts=[BOB])
    assert len(copies(w, d, BOB, mid)) == 1
    w.b.wait_queue_empty()
