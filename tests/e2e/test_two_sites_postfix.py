"""Two mail sites end to end, the visible notice included, every part real.

a.test and b.test each run the whole site as the README deploys it (support/two_sites.py):
a private Postfix (a.test on 127.0.14.2, b.test on 127.0.14.3) with SASL submission
through the sending milter (deploy/postfix/sender-*.cf) and the content filter in front
of Maildir delivery (receiver-*.cf); `mailtalk milter`, `filter` and `presence` (three
processes, one site key) on 127.0.14.4 and 127.0.14.5. dnsmasq on 127.0.14.53 serves
both `_mailtalk` TXT records; both sites ask it.
Mail is sent with swaks (SASL log-in); pages are opened in Debian's chromium driven by
playwright (never `playwright install`).

The world is built once for the module. The last two tests stop services (the filter
at b.test, the presence service at a.test): keep them last.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from support import notice_mail as nm
from support.mailtalk import MailtalkService, run_mailtalk
from support.message import split_message
from support.postfix import header_values
from support.postfix_mailbox import online
from support.signed_mail import pgp_mime_signed, smime_signed, smime_verify
from support.smtp import make_message, smtp_send
from support.two_sites import (ALICE, B_MX, BOB, CAROL, DAVE, LOOKUP_TIMEOUT, PASSWORD,
                               World, two_sites, world_dir)

pytest.importorskip("playwright")
from playwright.async_api import Browser, Page, expect  # noqa: E402


WAIT = 15_000                 # ms: the deadline of every browser wait
FORGED = {"X-Sender-Online": "yes; account=alice@a.test; status=online; "
                             "checked=2026-01-01T00:00:00Z; chat=<https://evil.test/c/x>",
          "X-Messenger-Account": "alice@a.test",
          "X-Mail-ID": "forgedforgedforgedforged00"}


@pytest.fixture(scope="module")
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    """Both sites, started once for the module (two Postfix and six services take
    seconds). Its directory (maillogs, services' logs, dnsmasq's log) is kept when a
    test of the module failed."""
    with world_dir(request) as base, two_sites(base) as w:
        yield w



async def alice_logs_in(w: World, browser: Browser) -> Page:
    page = await (await browser.new_context()).new_page()
    await page.goto(w.a_url + "/login")
    await page.fill("input[name=account]", ALICE)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page.locator("#my-status")).to_have_text("online", timeout=WAIT)
    return page


def link_of(params: dict[str, str], w: World) -> str:
    chat = params["chat"]
    assert chat.startswith(f"<{w.a_url}/c/") and chat.endswith(">"), chat
    return chat[1:-1]


def test_check_passes_at_both_sites(world: World) -> None:
    """`mailtalk check` against the real services, DNS and Postfix configs: each site
    runs both sides (sending milter and receiving filter)."""
    both = ["ok   milter answers", "ok   Postfix: smtpd_milters has the milter",
            "ok   Postfix: milter_default_action = accept", "ok   filter answers",
            "ok   re-injection answers", "ok   Postfix: content_filter = mailtalk:",
            "ok   Postfix: re-injection service"]
    for svc, mta in ((world.a_milter, world.a), (world.b_milter, world.b)):
        r = run_mailtalk(svc.config_path, "check", timeout=60,
                         env={**os.environ, "MAIL_CONFIG": str(mta.config_dir)})
        assert r.returncode == 0, r.stdout + r.stderr
        assert "FAIL" not in r.stdout and "ok   presence service answers" in r.stdout
        assert "ok   presence service ready" in r.stdout, r.stdout
        for line in [f"ok   DNS _mailtalk.{mta.domain}", *both]:
            assert line in r.stdout, r.stdout


async def test_no_then_yes_then_chat_both_ways(world: World, browser: Browser) -> None:
    w = world
    # Alice has no page open: `no`, with Bob's own link on a.test's published origin.
    w.send([BOB], "Lunch on Friday?", "<e2e-no@a.test>")
    got = w.mail(BOB, "<e2e-no@a.test>")
    ((state, params),) = online(got)
    assert (state, params["account"], params["status"]) == ("no", ALICE, "offline"), params
    link_of(params, w)

    # Alice's page is open in a real browser: `yes`.
    alice = await alice_logs_in(w, browser)
    w.send([BOB], "Budget 2027", "<e2e-yes@a.test>")
    got = w.mail(BOB, "<e2e-yes@a.test>")
    ((state, params),) = online(got)
    assert (state, params["status"]) == ("yes", "online"), params
    (mail_id,) = header_values(got, "X-Mail-ID")
    link = link_of(params, w)
    w.a_presence.wait_log(rf"mail {mail_id} of {ALICE} recorded", timeout=15)

    # Bob opens his link: the subject is shown; Alice's page is told and opens that mail.
    bob = await (await browser.new_context()).new_page()
    await bob.goto(link)
    await expect(bob.locator("#mail-subject")).to_have_text("Budget 2027", timeout=WAIT)
    await expect(bob.locator("#peer-status")).to_have_text(f"{ALICE} is online", timeout=WAIT)
    await expect(alice).to_have_url(re.compile(rf"/m/{re.escape(mail_id)}$"), timeout=WAIT)
    await expect(alice.locator("#mail-subject")).to_have_text("Budget 2027")
    await expect(alice.locator(f'#conversations li[data-mail-id="{mail_id}"]')).to_have_count(1)

    # Messages both ways.
    await bob.fill("#text", "Before or after tax?")
    await bob.press("#text", "Enter")
    await expect(alice.locator("#messages .text").last).to_have_text("Before or after tax?",
                                                                     timeout=WAIT)
    await alice.fill("#text", "Before tax.")
    await alice.press("#text", "Enter")
    await expect(bob.locator("#messages .text").last).to_have_text("Before tax.", timeout=WAIT)
    await expect(bob.locator("#messages .author").last).to_have_text(ALICE)


async def test_two_recipients_own_links_one_group_chat(world: World, browser: Browser) -> None:
    w = world
    alice = await alice_logs_in(w, browser)
    w.send([BOB, CAROL], "Team offsite", "<e2e-group@a.test>")
    copies = {r: w.mail(r, "<e2e-group@a.test>") for r in (BOB, CAROL)}
    links = {}
    for rcpt, raw in copies.items():
        ((state, params),) = online(raw)          # one header per copy: that recipient's
        assert state == "yes", params
        links[rcpt] = link_of(params, w)
    assert links[BOB] != links[CAROL]
    (mail_id,) = {header_values(raw, "X-Mail-ID")[0] for raw in copies.values()}
    w.a_presence.wait_log(rf"mail {mail_id} of {ALICE} recorded", timeout=15)

    pages = {}
    for rcpt in (BOB, CAROL):
        pages[rcpt] = await (await browser.new_context()).new_page()
        await pages[rcpt].goto(links[rcpt])
        await expect(pages[rcpt].locator("#mail-subject")).to_have_text("Team offsite",
                                                                         timeout=WAIT)
    for page in (alice, pages[BOB], pages[CAROL]):
        await expect(page.locator("#members")).to_have_text(f"{BOB}, {CAROL}", timeout=WAIT)
    await expect(alice).to_have_url(re.compile(rf"/m/{re.escape(mail_id)}$"), timeout=WAIT)
    await pages[CAROL].fill("#text", "Count me in")
    await pages[CAROL].press("#text", "Enter")
    for page in (alice, pages[BOB]):
        await expect(page.locator("#messages .text").last).to_have_text("Count me in",
                                                                        timeout=WAIT)
        await expect(page.locator("#messages .author").last).to_have_text(CAROL)


def test_forged_headers_do_not_reach_the_mailbox(world: World) -> None:
    w = world
    # A program on a.test with no SASL login: the milter strips all three headers.
    msg = make_message(from_="mallory@a.test", to=BOB, subject="forged 1",
                       message_id="<e2e-forged-1@a.test>", headers=FORGED)
    w.a.sendmail(msg, "mallory@a.test", [BOB])
    got = w.mail(BOB, "<e2e-forged-1@a.test>")
    assert header_values(got, "X-Messenger-Account") == []
    assert header_values(got, "X-Mail-ID") == []
    assert online(got) == []                  # no claim left: no X-Sender-Online at all
    assert b"evil.test" not in got and b"2026-01-01T00:00:00Z" not in got

    # Straight to b.test's MX, unauthenticated, claiming alice with a forged Mail-ID:
    # the forged X-Sender-Online is removed, a.test's service does not vouch for it.
    msg = make_message(from_=ALICE, to=BOB, subject="forged 2",
                       message_id="<e2e-forged-2@a.test>", headers=FORGED)
    smtp_send(B_MX, w.b.smtp_port, msg, sender=ALICE, rcpts=[BOB])
    got = w.mail(BOB, "<e2e-forged-2@a.test>")
    ((state, params),) = online(got)
    assert (state, params["account"]) == ("unknown", ALICE) and "chat" not in params, params
    assert b"evil.test" not in got and b"2026-01-01T00:00:00Z" not in got


def test_a_genuine_claim_copied_onto_another_mail_gets_no_link(world: World) -> None:
    """Mallory takes alice's real X-Messenger-Account and X-Mail-ID from a copy of her
    mail and sends a new mail with them straight to b.test's MX: the lookup carries the
    new Message-ID, which is not the one a.test recorded, so the answer is unknown."""
    w = world
    w.send([BOB], "the genuine one", "<e2e-claim-1@a.test>")
    genuine = w.mail(BOB, "<e2e-claim-1@a.test>")
    ((state, params),) = online(genuine)
    assert state in ("yes", "no") and "chat" in params, params     # the test can fail
    claim = {"X-Messenger-Account": header_values(genuine, "X-Messenger-Account")[0],
             "X-Mail-ID": header_values(genuine, "X-Mail-ID")[0]}
    # Until a.test has the milter's record (the outbox hands it over after a pause in
    # the mail), the Mail-ID alone vouches for the mail: the window the binding leaves.
    w.a_presence.wait_log(rf"mail {claim['X-Mail-ID']} of {ALICE} recorded")
    msg = make_message(from_=ALICE, to=BOB, subject="a copied claim",
                       message_id="<e2e-claim-2@evil.test>", headers=claim)
    smtp_send(B_MX, w.b.smtp_port, msg, sender=ALICE, rcpts=[BOB])
    got = w.mail(BOB, "<e2e-claim-2@evil.test>")
    ((state, params),) = online(got)
    assert state == "unknown" and "chat" not in params, params
    assert b"mailtalk:" not in got.partition(b"\n\n")[2]       # and no notice


# --- The notice in the message ------------------------------------------------------

NOTICE_SUBJECT = "Team offsite agenda"
NOTICE_MID = "<e2e-notice@a.test>"
ALICE_FROM = "Alice Example <alice@a.test>"
ORIGINAL_TEXT = ("Hi Bob and Carol,\n\nthe agenda for the offsite:\n"
                 "09:00 planning, 14:00 the lake.\n\nAlice\n")
ORIGINAL_HTML = ('<html><head><meta charset="utf-8"></head><body>'
                 "<p>Hi Bob and Carol,</p><p>the agenda for the offsite:</p>"
                 "<p>09:00 planning, 14:00 the lake. Caf\u00e9 at noon.</p><p>Alice</p>"
                 "</body></html>\n")


@dataclass
class NoticeMail:
    copies: dict[str, bytes]          # recipient -> the delivered copy
    links: dict[str, str]             # recipient -> the chat link of its X-Sender-Online
    status: str                       # alice's status in the notice
    mail_id: str


@pytest.fixture(scope="module")
def notice_mail(world: World) -> NoticeMail:
    """alice -> bob and carol, one multipart/alternative mail (text and HTML), sent
    through a.test's submission and delivered at b.test."""
    msg = nm.alternative(from_=ALICE_FROM, to=[BOB, CAROL], subject=NOTICE_SUBJECT,
                         message_id=NOTICE_MID, text=ORIGINAL_TEXT, html=ORIGINAL_HTML)
    world.submit(ALICE, [BOB, CAROL], msg)
    copies = {r: world.mail(r, NOTICE_MID) for r in (BOB, CAROL)}
    links, statuses = {}, set()
    for rcpt, raw in copies.items():
        ((state, params),) = online(raw)
        assert state in ("yes", "no"), params
        links[rcpt] = link_of(params, world)
        statuses.add(params["status"])
    (mail_id,) = {header_values(raw, "X-Mail-ID")[0] for raw in copies.values()}
    (status,) = statuses
    return NoticeMail(copies, links, status, mail_id)


def test_notice_with_each_recipients_own_link_in_text_and_html(notice_mail: NoticeMail
                                                                ) -> None:
    n = notice_mail
    assert n.links[BOB] != n.links[CAROL]
    for rcpt, other in ((BOB, CAROL), (CAROL, BOB)):
        raw, link = n.copies[rcpt], n.links[rcpt]
        text = nm.the_part(raw, "text/plain")
        notice, rest = nm.plain_notice(text)
        assert notice == (f"mailtalk: {ALICE_FROM} was {n.status} when this mail arrived.\n"
                          f"Chat about this mail: {link}\n\n"), text
        assert rest == ORIGINAL_TEXT, "the text after the notice is alice's, unchanged"

        html = nm.the_part(raw, "text/html")
        block = nm.html_notice(html)
        assert f'<a href="{link}">Chat about this mail</a>' in block, html
        assert html.index(block) == html.index("<body>") + len("<body>"), "opens <body>"
        assert html.replace(block, "", 1) == ORIGINAL_HTML, "nothing else in the HTML moved"

        assert set(nm.chat_links(text + html)) == {link}
        assert nm.token(n.links[other]) not in text + html, f"{other}'s link in {rcpt}'s copy"
        assert nm.token(n.links[other]).encode() not in raw


async def test_html_notice_in_chromium_opens_bobs_chat_beside_the_mail(
        world: World, notice_mail: NoticeMail, browser: Browser, e2e_dir: Path) -> None:
    """Bob's HTML part rendered as his mail client renders it; a click on the notice's
    link opens his chat page, which shows the mail. Screenshots in e2e_dir (kept if
    the test fails)."""
    n, link = notice_mail, notice_mail.links[BOB]
    page = await (await browser.new_context()).new_page()
    await page.set_content(nm.the_part(n.copies[BOB], "text/html"))
    block = page.locator('[data-mailtalk="notice"]')
    await expect(block).to_be_visible(timeout=WAIT)
    await expect(block).to_contain_text(
        f"mailtalk: {ALICE_FROM} was {n.status} when this mail arrived.")
    anchor = block.get_by_role("link", name="Chat about this mail")
    await expect(anchor).to_be_visible()
    await expect(anchor).to_have_attribute("href", link)
    top, first_line = await block.bounding_box(), await page.locator("p").first.bounding_box()
    assert top is not None and first_line is not None and top["y"] < first_line["y"]
    await page.screenshot(path=str(e2e_dir / "bob-reads-the-mail.png"), full_page=True)

    world.a_presence.wait_log(rf"mail {n.mail_id} of {ALICE} recorded", timeout=15)
    await anchor.click()
    await expect(page).to_have_url(link, timeout=WAIT)
    await expect(page.locator(".you")).to_have_text(f"You: {BOB}", timeout=WAIT)
    await expect(page.locator("#mail-subject")).to_have_text(NOTICE_SUBJECT, timeout=WAIT)
    await expect(page.locator("#mail-from")).to_contain_text(ALICE)
    await expect(page.locator("#mail-body")).to_contain_text("09:00 planning, 14:00 the lake.")
    await expect(page.locator("#offline-note")).to_contain_text(f"<{ALICE}> is offline",
                                                                timeout=WAIT)
    await page.screenshot(path=str(e2e_dir / "bob-chat.png"), full_page=True)


def _fresh_notice_only(text: str, html: str | None, own: str | None, sender: str
                       ) -> tuple[str, str | None]:
    """The parts of a copy delivered at a.test without the notice that a.test's filter
    may have put there for its recipient (sender `sender`, the recipient's `own`
    link); AssertionError if a notice there is anything else."""
    fresh, text = nm.plain_notice(text)
    if fresh:
        assert own and fresh.startswith(f"mailtalk: {sender} was "), fresh
        assert nm.chat_links(fresh) == [own], fresh
    if html is not None and (block := nm.html_notice(html)):
        assert own and nm.chat_links(block) == [own], block
        html = html.replace(block, "", 1)
        assert not nm.html_notice(html), "a second notice block"
    return text, html


def test_reply_and_forward_through_b_carry_no_link_of_bob(world: World,
                                                          notice_mail: NoticeMail) -> None:
    """Bob's client quotes his copy (notice and link) in a reply to alice, and forwards
    it inline to dave (text unquoted, HTML inside <blockquote type="cite">), both
    through b.test's submission port: b.test's sending milter removes his notice and
    link, and nothing else. A copy delivered at a.test may carry a fresh notice of
    a.test's filter, with its own recipient's link."""
    w, n = world, notice_mail
    bob_text = nm.the_part(n.copies[BOB], "text/plain")
    bob_html = nm.the_part(n.copies[BOB], "text/html")
    bob_token = nm.token(n.links[BOB])
    assert bob_token in bob_text and bob_token in bob_html, "what bob's client shows"

    said = "On 29/11/2026 07:00, Alice Example wrote:"
    reply_own, fwd_own = "Friday works for me, I will bring the slides.", "Dave, see below."
    fwd_head = f"Subject: {NOTICE_SUBJECT}\nFrom: {ALICE_FROM}\nTo: {BOB}, {CAROL}"
    fwd_head_html = fwd_head.replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>")
    w.submit(BOB, [ALICE], nm.plain(
        from_=BOB, to=[ALICE], subject=f"Re: {NOTICE_SUBJECT}", message_id="<e2e-reply@b.test>",
        text=nm.quoted_reply_text(reply_own, said, bob_text),
        headers={"In-Reply-To": NOTICE_MID, "References": NOTICE_MID}))
    w.submit(BOB, [DAVE], nm.alternative(
        from_=BOB, to=[DAVE], subject=f"Fwd: {NOTICE_SUBJECT}",
        message_id="<e2e-forward@b.test>", text=nm.forward_text(fwd_own, fwd_head, bob_text),
        html=nm.forward_html(fwd_own, fwd_head_html, nm.body_inner(bob_html))))
    expected = {
        ALICE: ("<e2e-reply@b.test>", nm.quoted_reply_text(reply_own, said, ORIGINAL_TEXT),
                None),
        DAVE: ("<e2e-forward@b.test>", nm.forward_text(fwd_own, fwd_head, ORIGINAL_TEXT),
               nm.forward_html(fwd_own, fwd_head_html, nm.body_inner(ORIGINAL_HTML)))}

    for rcpt, (mid, want_text, want_html) in expected.items():
        raw = w.mail(rcpt, mid)
        assert bob_token.encode() not in raw
        ((state, params),) = online(raw)
        own = params["chat"][1:-1] if "chat" in params else None
        assert own is None or nm.token(own) != bob_token
        text = nm.the_part(raw, "text/plain")
        html = nm.the_part(raw, "text/html") if want_html is not None else None
        assert bob_token not in text + (html or ""), f"bob's link reached {rcpt}"
        text, html = _fresh_notice_only(text, html, own, BOB)
        assert text == want_text, f"{rcpt}: bob's text, only his notice gone"
        assert html == want_html, f"{rcpt}: bob's HTML, only his notice block gone"
    assert len(re.findall(r"removed quoted mailtalk notices or chat links",
                          w.b_milter.log())) >= 2, w.b_milter.log_tail()


def test_smime_signed_mail_arrives_byte_for_byte_and_verifies(world: World,
                                                              e2e_dir: Path) -> None:
    mid = "<e2e-smime@a.test>"
    entity = (b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
              b"Hello Bob,\r\n\r\nthe contract, signed.\r\n\r\nAlice\r\n")
    msg = smime_signed(e2e_dir, {"From": ALICE_FROM, "To": BOB, "Subject": "Signed contract",
                                 "Date": nm.DATE, "Message-ID": mid}, entity)
    r = smime_verify(e2e_dir, msg, "sent.eml")
    assert r.returncode == 0, r.stderr
    world.submit(ALICE, [BOB], msg)
    got = world.mail(BOB, mid)
    ((state, params),) = online(got)
    assert "chat" in params, "a link was made: only the signature kept the notice out"
    assert split_message(got)[1] == split_message(msg)[1].replace(b"\r\n", b"\n")
    r = smime_verify(e2e_dir, got, "delivered.eml")
    assert r.returncode == 0 and b"Verification successful" in r.stderr, r.stderr
    # The check has teeth: one byte of the signed text changed, and it fails.
    r = smime_verify(e2e_dir, got.replace(b"the contract", b"the Contract"), "tampered.eml")
    assert r.returncode != 0, r.stderr


def test_pgp_mime_signed_mail_arrives_byte_for_byte(world: World) -> None:
    mid = "<e2e-pgp@a.test>"
    msg = pgp_mime_signed({"From": ALICE_FROM, "To": BOB, "Subject": "Signed with PGP",
                           "Date": nm.DATE, "Message-ID": mid},
                          "Hello Bob,\r\n\r\nthis one is PGP/MIME signed.\r\n\r\nAlice")
    world.submit(ALICE, [BOB], msg)
    got = world.mail(BOB, mid)
    ((state, params),) = online(got)
    assert "chat" in params, "a link was made: only the signature kept the notice out"
    assert split_message(got)[1] == split_message(msg)[1].replace(b"\r\n", b"\n")


def test_filter_stopped_postfix_defers_then_delivers_exactly_once(world: World) -> None:
    w = world
    sent = {"<e2e-deferred-1@a.test>": [BOB], "<e2e-deferred-2@a.test>": [BOB, CAROL]}
    w.b_filter.stop()
    try:
        for n, (mid, rcpts) in enumerate(sent.items(), 1):
            w.send(rcpts, f"While the filter is down {n}", mid)
        for mid in sent:
            qid = w.b.wait_log(rf"(\w+): message-id={mid}", timeout=30).group(1)
            w.b.wait_log(rf"mailtalk/smtp\[\d+\]: {qid}: to=<bob@b\.test>.*status=deferred",
                         timeout=30)
        assert w.b.queue(), "the mails should wait in b.test's queue"
        assert not [m for m in w.b.delivered(BOB)
                    if header_values(m, "Message-ID")[0] in sent]
    finally:
        w.b_filter = MailtalkService(w.base, w.b_cfg, subcommand="filter", name="b-filter-2")
        w.b_filter.start()
    for mid, rcpts in sent.items():
        for rcpt in rcpts:
            ((state, params),) = online(w.mail(rcpt, mid))
            assert state in ("yes", "no") and "chat" in params, params
    w.b.wait_queue_empty()
    w.a.wait_queue_empty()
    for mid, rcpts in sent.items():                 # still exactly one copy each
        for rcpt in rcpts:
            assert len([m for m in w.b.delivered(rcpt)
                        if header_values(m, "Message-ID") == [mid]]) == 1, (mid, rcpt)
    for mta in (w.a, w.b):
        assert "status=bounced" not in mta.maillog(), mta.maillog_tail()


def test_presence_hung_or_stopped_mail_arrives_unknown(world: World) -> None:
    """A hung, then a stopped, presence service at a.test: the mail still arrives, held
    at most the lookup timeout (the wait below is bounded by it plus slack: without
    the bound the filter would hold it for Postfix's minutes-long timeout)."""
    w = world
    pid = w.a_presence.proc.pid
    os.kill(pid, signal.SIGSTOP)      # accepts TCP (kernel backlog), never answers
    try:
        w.send([BOB], "Presence hung", "<e2e-hung@a.test>")
        got = w.mail(BOB, "<e2e-hung@a.test>", timeout=LOOKUP_TIMEOUT + 20)
    finally:
        os.kill(pid, signal.SIGCONT)
    ((state, params),) = online(got)
    assert (state, params["account"], params["status"]) == ("unknown", ALICE, "unknown")
    assert "chat" not in params

    w.a_presence.stop()
    w.send([BOB], "Presence stopped", "<e2e-down@a.test>")
    got = w.mail(BOB, "<e2e-down@a.test>", timeout=LOOKUP_TIMEOUT + 20)
    ((state, params),) = online(got)
    assert (state, params["account"]) == ("unknown", ALICE) and "chat" not in params
    assert header_values(got, "X-Mail-ID"), "the milter still marked the mail"
    for mta in (w.a, w.b):
        assert "status=bounced" not in mta.maillog()
