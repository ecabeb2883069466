"""The web chat in a real browser: Debian's chromium driven by PyPI's playwright.

Three browser contexts at once (sender, two recipients) against the real service on
a loopback address. Never `playwright install`: the browser is /usr/bin/chromium.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import AsyncIterator

import pytest

from support.presence_app import PASSWORD, Presence, start_presence

pytest.importorskip("playwright")
from playwright.async_api import Browser, Page, expect  # noqa: E402


HOST = "127.0.12.2"
ALICE, BOB, CAROL = "alice@a.test", "bob@b.test", "carol@c.test"
XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
SUBJECT = "Budget 2027 " + XSS
BODY = "Hello Bob and Carol,\nthe figures are attached.\n" + XSS
WAIT = 20_000   # ms: the deadline of every wait below (generous: CI machines are shared)
NOTIFICATION_STANDIN = """
window.__notes = [];
window.Notification = class {
  constructor(title, opts) { window.__notes.push([title, (opts || {}).body]); }
  static get permission() { return "granted"; }
  static requestPermission() { return Promise.resolve("granted"); }
};
Object.defineProperty(document, "hidden", {get: () => true});
"""
SHOT = Path(os.environ.get("MAILTALK_SHOT_DIR", "/tmp")) / "presence-recipient-phone.png"



@pytest.fixture
async def p(tmp_path: Path) -> AsyncIterator[Presence]:
    pres = await start_presence(tmp_path, host=HOST)
    await pres.add_user(ALICE)
    yield pres
    await pres.client.close()


async def no_script_ran(page: Page) -> None:
    assert await page.evaluate("typeof window.__pwned") == "undefined"
    assert await page.locator("#conv img, #conversations img").count() == 0


async def test_three_browsers_chat_about_one_mail(p: Presence, browser: Browser) -> None:
    base = p.svc.cfg.presence.public_url
    mid = await p.record(ALICE, [BOB, CAROL], subject=SUBJECT, body=BODY)
    links = (await p.lookup(ALICE, mid, [BOB, CAROL]))["links"]

    # Alice, the sender, logs in through the form. Headless chromium shows no
    # notifications: a stand-in Notification records them, and her tab counts as in
    # the background (the script notifies only then).
    actx = await browser.new_context()
    await actx.add_init_script(NOTIFICATION_STANDIN)
    alice = await actx.new_page()
    await alice.goto(base + "/")
    await alice.fill("input[name=account]", ALICE)
    await alice.fill("input[name=password]", PASSWORD)
    await alice.click("button[type=submit]")
    await expect(alice.locator("#my-status")).to_have_text("online", timeout=WAIT)
    await expect(alice.locator("#empty")).to_be_visible()

    # Bob opens his link on a phone: the mail beside the chat, the sender online.
    bctx = await browser.new_context(viewport={"width": 390, "height": 844},
                                     device_scale_factor=2, is_mobile=True, has_touch=True)
    bob = await bctx.new_page()
    await bob.goto(links[BOB])
    await expect(bob.locator("#mail-subject")).to_have_text(SUBJECT)
    await expect(bob.locator("#mail-body")).to_have_text(BODY)
    await expect(bob.locator("#peer-status")).to_have_text(f"{ALICE} is online", timeout=WAIT)
    await expect(bob.locator("#offline-note")).to_be_hidden()

    # Alice's page is told at once and shows the sent mail (Fig. 5); the Mail-ID is
    # for machines: no page shows it.
    await expect(alice.locator("#mail-subject")).to_have_text(SUBJECT, timeout=WAIT)
    await expect(alice.locator("#mail-body")).to_have_text(BODY)
    assert mid not in await alice.locator("body").inner_text()
    await expect(alice.locator("#mail-to")).to_have_text(f"{BOB}, {CAROL}")
    await expect(alice.locator("#members")).to_have_text(BOB, timeout=WAIT)
    assert alice.url == f"{base}/m/{mid}"

    # Bob writes; Alice sees it; her reply flows back.
    bob_text = "Is the total before tax? " + XSS
    await bob.fill("#text", bob_text)
    await bob.press("#text", "Enter")
    await expect(alice.locator("#messages .text").last).to_have_text(bob_text, timeout=WAIT)
    await expect(alice.locator("#messages .author").last).to_have_text(BOB)
    await alice.fill("#text", "Yes, before tax.")
    await alice.click("#compose button")
    await expect(bob.locator("#messages .text").last).to_have_text("Yes, before tax.",
                                                                   timeout=WAIT)

    # Carol joins the same conversation later and sees what was said before.
    cctx = await browser.new_context()
    carol = await cctx.new_page()
    await carol.goto(links[CAROL])
    await expect(carol.locator("#messages .text")).to_have_text(
        [bob_text, "Yes, before tax."], timeout=WAIT)
    await expect(bob.locator("#members")).to_have_text(f"{BOB}, {CAROL}", timeout=WAIT)
    await carol.fill("#text", "Thanks both")
    await carol.press("#text", "Enter")
    for page in (alice, bob):
        await expect(page.locator("#messages .text").last).to_have_text("Thanks both",
                                                                        timeout=WAIT)
        await expect(page.locator("#messages .author").last).to_have_text(CAROL)

    # Alice chooses "appear offline": the recipients' pages say she is offline.
    await alice.select_option("#mode", "offline")
    await expect(bob.locator("#offline-note")).to_be_visible(timeout=WAIT)
    await expect(carol.locator("#offline-note")).to_contain_text(f"{ALICE} is offline",
                                                                 timeout=WAIT)
    await expect(carol.locator("#peer-status")).to_be_hidden()     # said once
    assert (await p.lookup(ALICE, mid, []))["status"] == "offline"

    for page in (alice, bob, carol):
        await no_script_ran(page)
    notes = await alice.evaluate("window.__notes")
    assert [BOB + " opened your mail", SUBJECT] in notes
    assert [BOB, bob_text] in notes and [CAROL, "Thanks both"] in notes

    await bob.screenshot(path=str(SHOT), full_page=True)
    await alice.screenshot(path=str(SHOT.with_name("presence-sender.png")))
    for ctx in (actx, bctx, cctx):
        await ctx.close()


async def test_sender_offline_then_finds_the_conversation_unread(p: Presence,
                                                                 browser: Browser) -> None:
    base = p.svc.cfg.presence.public_url
    mid = await p.record(ALICE, [BOB], subject="Lunch?", body="Shall we?")
    link = (await p.lookup(ALICE, mid, [BOB]))["links"][BOB]
    bctx = await browser.new_context()
    bob = await bctx.new_page()
    await bob.goto(link)
    await expect(bob.locator("#offline-note")).to_be_visible(timeout=WAIT)
    await bob.fill("#text", "Yes, at one?")
    await bob.press("#text", "Enter")
    await expect(bob.locator("#messages .text")).to_have_text(["Yes, at one?"], timeout=WAIT)

    actx = await browser.new_context()
    alice = await actx.new_page()
    await alice.goto(base + "/login")
    await alice.fill("input[name=account]", ALICE)
    await alice.fill("input[name=password]", PASSWORD)
    await alice.click("button[type=submit]")
    item = alice.locator("#conversations li").first
    await expect(item.locator(".subj")).to_have_text("Lunch?", timeout=WAIT)
    await expect(item.locator(".unread")).to_have_text("1")
    await item.locator("a").click()
    await expect(alice.locator("#messages .text")).to_have_text(["Yes, at one?"],
                                                                timeout=WAIT)
    await expect(bob.locator("#offline-note")).to_be_hidden(timeout=WAIT)   # live presence
    for ctx in (actx, bctx):
        await ctx.close()
