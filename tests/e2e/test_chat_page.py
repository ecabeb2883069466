"""The chat page as people see it, at desktop (1280x800) and phone (390x844) size, in
Debian's Chromium: names instead of addresses, no Mail-ID, one time format in the
reader's own time zone, a one-line header, the compose box always at hand, the mail
folded on the sender's phone, a mail that arrives after its link was opened, the
notification offer on a link page and unread counts in the title. Screenshots of each
size go to $MAILTALK_SHOT_DIR (default /tmp/mailtalk-shots) for a person to look at.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from support.presence_app import PASSWORD, Presence, start_presence
from support.presence_ws import next_of, sender_ws

pytest.importorskip("playwright")
from playwright.async_api import Page, expect  # noqa: E402

HOST = "127.0.24.2"
ALICE, BOB = "alice@a.test", "bob@b.test"
NAMES = {ALICE: "Alice Example", BOB: "Bob Builder"}
WAIT = 20_000
SIZES = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
SHOTS = Path(os.environ.get("MAILTALK_SHOT_DIR", "/tmp/mailtalk-shots"))
ZONE = "America/New_York"        # the reader's zone: 07:00 UTC is 02:00 there in winter
NOTIFICATIONS_ASKABLE = """
window.Notification = class {
  constructor() {}
  static get permission() { return "default"; }
  static requestPermission() { return Promise.resolve("granted"); }
};
Object.defineProperty(document, "hidden", {get: () => true});
document.hasFocus = () => false;
"""


@pytest.fixture
async def p(tmp_path: Path) -> AsyncIterator[Presence]:
    pres = await start_presence(tmp_path, host=HOST)
    await pres.add_user(ALICE)
    yield pres
    await pres.client.close()


async def record(p: Presence, mail_id: str | None = None, subject: str = "Budget 2027") -> str:
    """alice's mail to bob as the milter records it, with the display names of its
    From and To, sent on 29 Nov 2026 at 07:00 UTC."""
    mail_id = mail_id or p.mail_ids.issue(ALICE)
    r = await p.client.post("/api/v1/mails", headers=p.bearer(), json={
        "mail_id": mail_id, "account": ALICE, "message_id": "<m1@a.test>",
        "subject": subject, "date": "2026-11-29T07:00:00Z", "recipients": [BOB],
        "body_text": "The figures.\n" * 40, "queue_id": "4ABC", "names": NAMES})
    assert r.status in (200, 201), await r.text()
    return mail_id


async def link_of(p: Presence, mail_id: str) -> str:
    return (await p.lookup(ALICE, mail_id, [BOB]))["links"][BOB]


async def page_at(browser: Any, size: str, script: str = "") -> Page:
    ctx = await browser.new_context(viewport=SIZES[size], timezone_id=ZONE, locale="en-US",
                                    is_mobile=size == "phone", has_touch=size == "phone")
    if script:
        await ctx.add_init_script(script)
    return await ctx.new_page()


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"))


async def one_line_header(page: Page, size: str) -> None:
    """One line, and everything in it (and the page) within the screen's width."""
    box = await page.locator("header.top").bounding_box()
    assert box is not None and box["height"] < 48, box
    width = SIZES[size]["width"]
    rights = await page.locator("header.top > :visible, #compose button").evaluate_all(
        "els => els.map(e => e.getBoundingClientRect().right)")
    assert rights and max(rights) <= width, rights
    assert await page.evaluate(f"document.documentElement.scrollWidth <= {width}")


@pytest.mark.parametrize("size", SIZES)
async def test_the_recipients_page(p: Presence, browser: Any, size: str) -> None:
    mid = await record(p)
    old = await p.svc.store.add_message(mid, ALICE, "Sent before", p.clock() - 3 * 86400)
    bob = await page_at(browser, size)
    await bob.goto(await link_of(p, mid))
    await expect(bob.locator("#mail-from")).to_have_text(f"Alice Example <{ALICE}>")
    await expect(bob.locator("#mail-date")).to_contain_text("02:00", timeout=WAIT)  # in NY
    await expect(bob.locator("#mail-date")).to_contain_text("Nov 29")
    await expect(bob.locator("#offline-note")).to_contain_text("Alice Example <alice@a.test> is offline")
    older = bob.locator("#messages time").first
    await expect(older).to_contain_text(", ")                     # another day: with it
    assert re.search(r"[A-Z][a-z]{2}, [A-Z][a-z]{2} \d", await older.inner_text())
    await bob.fill("#text", "Thanks, Alice")
    await bob.press("#text", "Enter")
    mine = bob.locator("#messages .msg.mine")
    await expect(mine.locator(".author")).to_have_text("Bob Builder", timeout=WAIT)
    assert re.fullmatch(r"\d\d:\d\d [AP]M", await mine.locator("time").inner_text())  # today
    await expect(bob.locator("#messages .author").first).to_have_text("Alice Example")
    assert mid not in await bob.locator("body").inner_text()       # no Mail-ID for people
    assert old.id > 0
    await one_line_header(bob, size)

    await bob.locator("#mail-box summary").click()                 # the mail folds
    await expect(bob.locator("#mail-body")).to_be_hidden()
    await bob.locator("#mail-box summary").click()
    await expect(bob.locator("#mail-body")).to_be_visible()
    for i in range(30):
        await p.svc.store.add_message(mid, ALICE, f"Line {i}", p.clock())
    await bob.reload()
    await expect(bob.locator("#messages .text").last).to_have_text("Line 29", timeout=WAIT)
    await expect(bob.locator("#compose")).to_be_in_viewport()      # always at hand
    await expect(bob.locator("#text")).to_be_in_viewport()
    await shot(bob, f"chat-recipient-{size}")


@pytest.mark.parametrize("size", SIZES)
async def test_the_senders_page_opens_on_the_chat(p: Presence, browser: Any, size: str) -> None:
    mid = await record(p)
    alice = await page_at(browser, size)
    await alice.goto(p.svc.cfg.presence.public_url + "/login")
    await alice.fill("input[name=account]", ALICE)
    await alice.fill("input[name=password]", PASSWORD)
    await alice.click("button[type=submit]")
    await alice.goto(f"{p.svc.cfg.presence.public_url}/m/{mid}")
    await expect(alice.locator("#mail-to")).to_have_text(f"Bob Builder <{BOB}>", timeout=WAIT)
    folded = size == "phone"
    assert await alice.locator("#mail-box").evaluate("d => d.open") is (not folded)
    await expect(alice.locator("#compose")).to_be_in_viewport()
    await one_line_header(alice, size)
    assert mid not in await alice.locator("body").inner_text()
    await shot(alice, f"chat-sender-{size}")


async def test_a_mail_that_comes_after_its_link_shows_without_a_reload(
        p: Presence, browser: Any) -> None:
    mid = p.mail_ids.issue(ALICE)
    link = await link_of(p, mid)                   # the lookup came before the record
    bob = await page_at(browser, "desktop")
    await bob.goto(link)
    await expect(bob.locator("#mail-pending")).to_be_visible()
    await expect(bob.locator("body")).to_have_attribute("data-connected", "yes", timeout=WAIT)
    await record(p, mid, subject="Arrived late")
    await expect(bob.locator("#mail-subject")).to_have_text("Arrived late", timeout=WAIT)
    await expect(bob.locator("#mail-pending")).to_be_hidden()
    await expect(bob.locator("#mail-from")).to_have_text(f"Alice Example <{ALICE}>")


async def test_a_recipient_is_offered_notifications_and_counts_unread(
        p: Presence, browser: Any) -> None:
    mid = await record(p)
    bob = await page_at(browser, "phone", NOTIFICATIONS_ASKABLE)    # in the background
    await bob.goto(await link_of(p, mid))
    await expect(bob.locator("#notify")).to_be_visible()
    await expect(bob.locator("body")).to_have_attribute("data-connected", "yes", timeout=WAIT)
    alice = await sender_ws(p)
    await alice.send_json({"type": "join", "mail_id": mid})
    await next_of(alice, "room")
    for text in ("One", "Two"):
        await alice.send_json({"type": "send", "mail_id": mid, "text": text})
        await next_of(alice, "message", text=text)
    await expect(bob).to_have_title("(2) Budget 2027 \u2013 mailtalk", timeout=WAIT)
    await alice.close()
