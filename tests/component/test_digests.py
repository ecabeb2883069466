"""Digests from the real presence app, through its real WebSockets, to a real SMTP
server (aiosmtpd standing in for the site's MTA; the Postfix and Dovecot chain is
tests/e2e/test_digest_thread.py). The test moves the service's clock and runs one
round of the digest loop (`digest.run_once`) where the service would run it on its
own timer (every 30 s at most)."""

from __future__ import annotations

import asyncio
import email
import email.policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from presence_api import digest
from support.presence_app import Presence, start_presence
from support.presence_ws import links_for, next_of, open_link, sender_ws

HOST = "127.0.23.1"
ALICE, BOB, CAROL = "alice@a.test", "bob@b.test", "carol@c.test"
QUIET = 15 * 60


class Mailbox:
    """The MTA: keeps what it is given (envelope sender, recipients, message)."""

    def __init__(self) -> None:
        self.mails: list[tuple[str, list[str], EmailMessage]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        msg = email.message_from_bytes(envelope.original_content or b"", policy=email.policy.default)
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), msg))  # type: ignore[arg-type]
        return "250 2.0.0 queued"

    def to(self, rcpt: str) -> list[EmailMessage]:
        return [m for _, r, m in self.mails if r == [rcpt]]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[Presence, Mailbox]]:
    box = Mailbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(box), host=HOST, port=0)
    port = server.sockets[0].getsockname()[1]
    # The service's own loop looks at its start (nothing due) and then every 30 s of
    # real time; the test moves the service's clock and runs the rounds that matter.
    p = await start_presence(tmp_path, host=HOST, submit=f"{HOST}:{port}")
    await p.add_user(ALICE)
    try:
        yield p, box
    finally:
        await p.client.close()
        server.close()


async def say(ws: Any, mail_id: str, text: str) -> None:
    await ws.send_json({"type": "send", "mail_id": mail_id, "text": text})
    await next_of(ws, "message", text=text)


async def join_and_read(ws: Any, mail_id: str) -> None:
    """What the page does on entering a room: show it, mark it read."""
    await ws.send_json({"type": "join", "mail_id": mail_id})
    room = await next_of(ws, "room")
    if room["messages"]:
        await ws.send_json({"type": "read", "mail_id": mail_id,
                            "up_to": room["messages"][-1]["id"]})


async def round_after_quiet(p: Presence) -> int:
    p.clock.advance(QUIET + 1)
    return await digest.run_once(p.svc, p.clock())


def text_of(msg: EmailMessage) -> str:
    return msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


async def test_what_bob_missed_comes_as_one_reply_in_the_thread(
        site: tuple[Presence, Mailbox]) -> None:
    p, box = site
    mid, links = await links_for(p, [BOB, CAROL], subject="Budget 2027")
    bob = await open_link(p, links[BOB])
    await bob.send_json({"type": "join", "mail_id": mid})
    await say(bob, mid, "Friday works for me.")
    await bob.close()                                   # bob closes the page
    alice = await sender_ws(p)
    await join_and_read(alice, mid)
    for i in range(10):                                 # a burst: still one digest
        await say(alice, mid, f"Answer {i}")
    assert await digest.run_once(p.svc, p.clock()) == 0   # not quiet yet
    assert await round_after_quiet(p) == 1
    assert await round_after_quiet(p) == 0              # once per quiet spell

    # Alice saw all on her page; carol never opened her link: neither gets one.
    assert [r for _, r, _ in box.mails] == [[BOB]]
    sender, _, msg = box.mails[0]
    assert sender == "<>"                               # a bounce goes nowhere
    assert msg["Subject"] == "Re: Budget 2027"
    assert msg["In-Reply-To"] == "<m1@a.test>" and msg["References"] == "<m1@a.test>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["From"].addresses[0].addr_spec == "mailtalk@a.test"
    text = text_of(msg)
    assert all(f"Answer {i}" in text for i in range(10)) and "Friday works" not in text
    assert p.svc.cfg.presence.public_url + links[BOB] in text
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Answer 9" in html and links[BOB] in html

    # Bob answers by mail-less chat again; alice closed her page: now she gets one,
    # with her conversation page, and bob none (he wrote it).
    await alice.close()
    bob = await open_link(p, links[BOB])
    await say(bob, mid, "See you then.")
    await bob.close()
    assert await round_after_quiet(p) == 1
    (to_alice,) = box.to(ALICE)
    assert "See you then." in text_of(to_alice)
    assert f"{p.svc.cfg.presence.public_url}/m/{mid}" in text_of(to_alice)
    assert len(box.to(BOB)) == 1


async def test_hostile_text_arrives_as_text(site: tuple[Presence, Mailbox]) -> None:
    p, box = site
    mid, links = await links_for(p, [BOB])
    alice = await sender_ws(p)
    await join_and_read(alice, mid)
    bob = await open_link(p, links[BOB])
    await bob.close()
    hostile = '<script>alert(1)</script>\r\nSubject: you won\r\n\r\n<a href="x">x</a>'
    await say(alice, mid, hostile)
    assert await round_after_quiet(p) == 1
    (msg,) = box.to(BOB)
    assert msg["Subject"] == "Re: Hello" and len(msg.get_all("Subject")) == 1
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '<a href="x">' not in html
    text = text_of(msg)
    assert "  Subject: you won" in text          # indented in the body, not a header
    assert "<script>alert(1)</script>" in text   # plain text is text


async def test_digests_off_and_a_restart_send_nothing_twice(
        site: tuple[Presence, Mailbox], tmp_path: Path) -> None:
    p, box = site
    mid, links = await links_for(p, [BOB, CAROL])
    bob = await open_link(p, links[BOB])
    switch = '<input type="checkbox" id="digests"'
    assert f"{switch} checked>" in await (await p.client.get(links[BOB])).text()
    await bob.send_json({"type": "digests", "on": False})      # bob's own choice
    assert (await next_of(bob, "digests"))["on"] is False
    await bob.close()
    assert f"{switch}>" in await (await p.client.get(links[BOB])).text()
    carol = await open_link(p, links[CAROL])
    await carol.close()
    alice = await sender_ws(p)
    await join_and_read(alice, mid)
    await say(alice, mid, "Anyone?")
    assert await round_after_quiet(p) == 1
    assert [r for _, r, _ in box.mails] == [[CAROL]]
    # The record of what went out is in the database: a new process sends nothing more.
    await p.client.close()
    again = await start_presence(tmp_path, host=HOST, submit=str(p.svc.cfg.presence.submit))
    try:
        again.clock.now = p.clock.now
        assert await round_after_quiet(again) == 0
    finally:
        await again.client.close()
    assert len(box.mails) == 1


async def test_an_mta_that_refuses_means_a_later_try(site: tuple[Presence, Mailbox],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    p, box = site
    mid, links = await links_for(p, [BOB])
    bob = await open_link(p, links[BOB])
    await bob.close()
    alice = await sender_ws(p)
    await join_and_read(alice, mid)
    await say(alice, mid, "Still there?")
    good = p.svc.cfg.presence.submit
    object.__setattr__(p.svc.cfg.presence, "submit", type(good)(HOST, 9))   # nothing listens
    assert await round_after_quiet(p) == 0
    assert "digest to bob@b.test of 1 messages not sent" in caplog.text
    object.__setattr__(p.svc.cfg.presence, "submit", good)
    p.clock.advance(1)
    assert await digest.run_once(p.svc, p.clock()) == 0   # within the retry wait
    p.clock.advance(digest.RETRY_SECONDS)
    assert await digest.run_once(p.svc, p.clock()) == 1
    assert len(box.to(BOB)) == 1
