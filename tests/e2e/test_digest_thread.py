"""The chat comes back into the mail thread, every part real: alice (a.test, real
Postfix with SASL submission and the sending milter) mails bob (b.test: Postfix's
lmtp -> mailtalk's LMTP hook -> a private Dovecot, read over IMAP). Bob opens his
link in Chromium, writes, closes the page; alice answers from her page. Once the chat
is quiet, a.test's presence service hands bob a digest to a.test's own Postfix, which
takes it to bob's mailbox: one mail, threaded under the original, whose link opens
bob's chat. Alice, who saw everything, gets nothing.
"""

from __future__ import annotations

import email
import email.policy
import re
from typing import Iterator

import pytest

from support.dovecot import Dovecot, unavailable
from support.postfix_mailbox import online
from support.two_sites import ALICE, BOB, PASSWORD, World, two_sites, world_dir
from support.wait import wait_for

pytest.importorskip("playwright")
from playwright.async_api import Browser, expect  # noqa: E402

QUIET_MINUTES = 0.05            # 3 s: the chat counts as quiet this soon
WAIT = 20_000


@pytest.fixture(scope="module")
def site(request: pytest.FixtureRequest) -> Iterator[tuple[World, Dovecot]]:
    if why := unavailable():
        pytest.skip(why)
    with world_dir(request) as base:
        dovecot = Dovecot(base, {BOB: "bob-imap-pw-1"}).start()
        try:
            with two_sites(base, b_lmtp_next=dovecot.lmtp, a_presence={
                    "digest_after_minutes": QUIET_MINUTES, "submit": "MTA"}) as w:
                yield w, dovecot
        finally:
            dovecot.stop()



def inbox(w: World, d: Dovecot, count: int) -> list[bytes]:
    def got() -> list[bytes] | None:
        found = d.messages(BOB)
        if len(found) >= count:
            return found
        for mta in (w.a, w.b):
            if mta.queue():
                mta.flush()
        return None
    return wait_for(got, timeout=60, interval=0.3, what=f"{count} mails for {BOB}")


def parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


async def test_bob_finds_alices_answer_in_the_thread(site: tuple[World, Dovecot],
                                                     browser: Browser) -> None:
    w, d = site
    mid = "<digest-thread@a.test>"
    w.send([BOB], "Lunch on Friday?", mid)
    (original,) = inbox(w, d, 1)
    ((_, params),) = online(original)
    link = params["chat"].strip("<>")
    mail_id = parsed(original)["X-Mail-ID"]

    bob = await (await browser.new_context()).new_page()
    await bob.goto(link)
    await expect(bob.locator("#digests")).to_be_checked()          # his switch, on
    await bob.fill("#text", "Friday works. Where?")
    await bob.press("#text", "Enter")
    await expect(bob.locator("#messages")).to_contain_text("Friday works", timeout=WAIT)
    await bob.close()                                      # bob closes the page

    alice = await (await browser.new_context()).new_page()
    await alice.goto(w.a_url + "/login")
    await alice.fill("input[name=account]", ALICE)
    await alice.fill("input[name=password]", PASSWORD)
    await alice.click("button[type=submit]")
    await alice.goto(f"{w.a_url}/m/{mail_id}")
    await expect(alice.locator("#messages")).to_contain_text("Friday works", timeout=WAIT)
    await alice.fill("#text", "At the <b>canteen</b>, 12:30.")
    await alice.press("#text", "Enter")
    await expect(alice.locator("#messages")).to_contain_text("canteen", timeout=WAIT)

    mails = [parsed(m) for m in inbox(w, d, 2)]
    (digest,) = [m for m in mails if m["Message-ID"] != mid]
    assert digest["Subject"] == "Re: Lunch on Friday?"
    assert digest["In-Reply-To"] == mid and digest["References"] == mid
    assert digest["Auto-Submitted"] == "auto-generated"
    assert "X-Sender-Online" not in digest and "X-Mail-ID" not in digest   # left alone
    text = digest.get_body(("plain",)).get_content()
    assert "At the <b>canteen</b>, 12:30." in text and "Friday works" not in text
    assert link in text                                    # bob's own link, unstripped
    html = digest.get_body(("html",)).get_content()
    assert "&lt;b&gt;canteen&lt;/b&gt;" in html
    # Dovecot threads it under the original: (1 2) in UID THREAD REFERENCES.
    assert re.search(r"\(\d+ \d+\)", d.thread_references(BOB)), d.thread_references(BOB)

    again = await (await browser.new_context()).new_page()
    await again.goto(link)                                 # the digest's link is bob's chat
    await expect(again.locator("#messages")).to_contain_text("canteen", timeout=WAIT)

    # Alice saw everything: the log says one digest, to bob.
    log_text = w.a_presence.log()
    assert re.findall(r"digest to (\S+):", log_text) == [BOB], log_text[-2000:]


def test_the_sendmail_command_takes_a_digest_too(site: tuple[World, Dovecot],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`[presence] submit = "sendmail"`: Postfix's own sendmail(1) (a.test's, through
    MAIL_CONFIG) takes the digest with the null sender, and it reaches bob's mailbox."""
    from pathlib import Path

    from presence_api.digest import submit
    w, d = site
    before = len(d.messages(BOB))
    mid = "<digest-by-sendmail@a.test>"
    data = (f"From: mailtalk@a.test\r\nTo: {BOB}\r\nSubject: Re: by sendmail\r\n"
            f"Message-ID: {mid}\r\nAuto-Submitted: auto-generated\r\n\r\nhello\r\n").encode()
    monkeypatch.setenv("MAIL_CONFIG", str(w.a.config_dir))
    submit(Path("/usr/sbin/sendmail"), BOB, data)
    assert len(inbox(w, d, before + 1)) == before + 1
    (copy,) = d.copies(BOB, mid)
    assert b"Return-Path: <>" in copy.split(b"\r\n\r\n")[0]      # the null sender
