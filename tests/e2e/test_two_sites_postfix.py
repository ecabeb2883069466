"""Two mail sites end to end (issue 4 §5), every part real.

a.test: a private Postfix on 127.0.14.2 with SASL submission and the Postfix lines of
deploy/postfix/sender-*.cf; `mailtalk milter` and `mailtalk presence` (two processes,
one site key) on 127.0.14.4.
b.test: a private Postfix on 127.0.14.3 with deploy/postfix/receiver-*.cf (content
filter, re-injection, Maildir delivery); `mailtalk filter` and `mailtalk presence` on
127.0.14.5.
dnsmasq on 127.0.14.53 serves both `_mailtalk` TXT records; both sites ask it.
Mail is sent with swaks (SASL log-in); pages are opened in Debian's chromium driven by
playwright (never `playwright install`).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from support import free_port
from support.dns import Dnsmasq, mailtalk_txt
from support.postfix_deploy import apply_receiver_snippets, apply_sender_snippets
from support.postfix_mailbox import online, wait_mail
from support.mailtalk import MailtalkService, run_mailtalk
from support.postfix import PostfixInstance, chmod_chain, header_values
from support.requires import require_dnsmasq, require_postfix, require_swaks
from support.smtp import make_message, smtp_send, swaks

pytest.importorskip("playwright")
from playwright.async_api import Browser, Page, expect  # noqa: E402
from support.browser import launch  # noqa: E402


A_MX, B_MX = "127.0.14.2", "127.0.14.3"          # the two Postfix instances
A_SVC, B_SVC = "127.0.14.4", "127.0.14.5"        # mailtalk at a.test, at b.test
DNS = "127.0.14.53"
ALICE, BOB, CAROL = "alice@a.test", "bob@b.test", "carol@b.test"
PASSWORD = "alice-e2e-Secret-42"
LOOKUP_TIMEOUT = 1.5          # b.test's [filter] lookup_timeout
WAIT = 15_000                 # ms: the deadline of every browser wait
FORGED = {"X-Sender-Online": "yes; account=alice@a.test; status=online; "
                             "checked=2026-01-01T00:00:00Z; chat=<https://evil.test/c/x>",
          "X-Messenger-Account": "alice@a.test",
          "X-Mail-ID": "forgedforgedforgedforged00"}


@dataclass
class World:
    base: Path
    a: PostfixInstance
    b: PostfixInstance
    dns: Dnsmasq
    a_cfg: dict
    b_cfg: dict
    a_milter: MailtalkService
    a_presence: MailtalkService
    b_filter: MailtalkService
    b_presence: MailtalkService
    submit_port: int

    @property
    def a_url(self) -> str:
        return self.a_cfg["presence"]["public_url"]

    def send(self, rcpts: list[str], subject: str, message_id: str) -> None:
        """alice logs in on a.test's submission port and sends with swaks."""
        msg = make_message(from_=ALICE, to=rcpts, subject=subject, message_id=message_id,
                           body=f"Hello,\r\n{subject}\r\nAlice\r\n")
        code, transcript = swaks(A_MX, self.submit_port, to=rcpts, from_=ALICE,
                                 auth=(ALICE, PASSWORD), data=msg)
        assert code == 0, transcript

    def mail(self, rcpt: str, message_id: str, timeout: float = 30.0) -> bytes:
        copies = wait_mail(self.b, rcpt, message_id, timeout=timeout, also_flush=(self.a,))
        assert len(copies) == 1, f"{len(copies)} copies of {message_id} for {rcpt}"
        return copies[0]


def _site_config(state: Path, domain: str, svc: str, dns: str) -> dict:
    port = free_port(svc)
    return {"site": {"state_dir": str(state)}, "domains": {"names": [domain]},
            "presence": {"listen": f"{svc}:{port}", "public_url": f"http://{svc}:{port}"},
            "dns": {"nameservers": [dns]}}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """Both sites, started once for the module (Postfix and four services take seconds)."""
    require_postfix()
    require_swaks()
    require_dnsmasq()
    base = Path(tempfile.mkdtemp(prefix="mailtalk-e2e-two-sites-"))
    chmod_chain(base)
    dns_port = free_port(DNS)
    dns_ns = f"{DNS}:{dns_port}"
    a_cfg = _site_config(base / "a-state", "a.test", A_SVC, dns_ns)
    a_cfg["milter"] = {"socket": f"inet:{free_port(A_SVC)}@{A_SVC}", "outbox_retry_max": 1}
    b_cfg = _site_config(base / "b-state", "b.test", B_SVC, dns_ns)
    reinject = free_port(B_MX)
    b_cfg["filter"] = {"listen": f"{B_SVC}:{free_port(B_SVC)}", "reinject": f"{B_MX}:{reinject}",
                       "lookup_timeout": LOOKUP_TIMEOUT}
    dns = Dnsmasq(DNS, port=dns_port, log_dir=base, txt_records={
        "_mailtalk.a.test": mailtalk_txt(a_cfg["presence"]["public_url"],
                                         base / "a-state" / "lookup-signing.key"),
        "_mailtalk.b.test": mailtalk_txt(b_cfg["presence"]["public_url"],
                                         base / "b-state" / "lookup-signing.key")})
    services = {
        "a_milter": MailtalkService(base, a_cfg, subcommand="milter", name="a-milter"),
        "a_presence": MailtalkService(base, a_cfg, subcommand="presence", name="a-presence"),
        "b_filter": MailtalkService(base, b_cfg, subcommand="filter", name="b-filter"),
        "b_presence": MailtalkService(base, b_cfg, subcommand="presence", name="b-presence"),
    }
    a = PostfixInstance(base, "a", A_MX, "a.test")
    b = PostfixInstance(base, "b", B_MX, "b.test")
    submit_port = free_port(A_MX)
    w = World(base, a, b, dns, a_cfg, b_cfg, submit_port=submit_port, **services)
    try:
        dns.start()
        for svc in services.values():
            svc.start()
        r = w.a_presence.command("user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n")
        assert r.returncode == 0, r.stderr

        b.local_maildir(["b.test"])
        apply_receiver_snippets(b, b_cfg["filter"]["listen"], reinject)
        milter = a_cfg["milter"]["socket"]            # inet:PORT@HOST -> inet:HOST:PORT
        port, _, host = milter[len("inet:"):].partition("@")
        a.enable_sasl_submission(users={ALICE: PASSWORD})
        apply_sender_snippets(a, f"inet:{host}:{port}", submit_port, base)
        a.relay_to("b.test", B_MX, b.smtp_port)
        b.start()
        a.start()
        yield w
    finally:
        for inst in (a, b):
            try:
                inst.stop()
            except Exception:
                pass
        for svc in (w.a_milter, w.a_presence, w.b_filter, w.b_presence):
            svc.kill()
        dns.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async for b in launch():
        yield b


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
    """`mailtalk check` against the real services, DNS and Postfix configs."""
    expect = {"a": ["ok   DNS _mailtalk.a.test", "ok   milter answers",
                    "ok   Postfix: smtpd_milters has the milter",
                    "ok   Postfix: milter_default_action = accept"],
              "b": ["ok   DNS _mailtalk.b.test", "ok   filter answers",
                    "ok   re-injection answers", "ok   Postfix: content_filter = mailtalk:",
                    "ok   Postfix: re-injection service"]}
    for svc, mta in ((world.a_milter, world.a), (world.b_filter, world.b)):
        r = run_mailtalk(svc.config_path, "check", timeout=60,
                         env={**os.environ, "MAIL_CONFIG": str(mta.config_dir)})
        assert r.returncode == 0, r.stdout + r.stderr
        assert "FAIL" not in r.stdout and "ok   presence service answers" in r.stdout
        for line in expect[mta.name]:
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

    # Bob opens his link: the subject is shown; Alice's page is told, with the Mail-ID.
    bob = await (await browser.new_context()).new_page()
    await bob.goto(link)
    await expect(bob.locator("#mail-subject")).to_have_text("Budget 2027", timeout=WAIT)
    await expect(bob.locator("#peer-status")).to_have_text(f"{ALICE} is online", timeout=WAIT)
    await expect(alice.locator("#mail-id")).to_have_text(mail_id, timeout=WAIT)
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
    await expect(alice.locator("#mail-id")).to_have_text(mail_id, timeout=WAIT)
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
    ((state, params),) = online(got)
    assert state == "unknown" and "chat" not in params, params
    assert b"evil.test" not in got and b"2026-01-01T00:00:00Z" not in got

    # Straight to b.test's MX, unauthenticated, claiming alice with a forged Mail-ID:
    # the forged X-Sender-Online is removed, a.test's service does not vouch for it.
    msg = make_message(from_=ALICE, to=BOB, subject="forged 2",
                       message_id="<e2e-forged-2@a.test>", headers=FORGED)
    smtp_send(B_MX, w.b.smtp_port, msg, sender=ALICE, rcpts=[BOB])
    got = w.mail(BOB, "<e2e-forged-2@a.test>")
    ((state, params),) = online(got)
    assert state == "unknown" and "chat" not in params, params
    assert b"evil.test" not in got and b"2026-01-01T00:00:00Z" not in got


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
