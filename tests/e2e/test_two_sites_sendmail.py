"""Two sites on real Sendmail (Debian's sendmail-bin, unpacked beside Postfix and run
with configs of their own built by m4 from deploy/sendmail/*.mc as written):

  swaks --auth -> Sendmail a.test (MSA + sending milter, `mailtalk run` with presence)
               -> Sendmail b.test (receiving milter, `mailtalk filter` mode = milter)
               -> an SMTP sink (in place of b.test's mailbox: we read the bytes there)

b.test's milter finds a.test's presence service through dnsmasq's _mailtalk TXT record
and asks it: alice has no page open, so bob's copy says `no` with his chat link."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import aiohttp
import pytest

from mailtalk import headers, online_header
from support import free_port, wait_for
from support.smtp_sink import SinkHandler, start_sink
from support.sendmail import SendmailInstance, unavailable
from support.dns import mailtalk_txt
from support.smtp import swaks
from support.presence_ws import next_of


ROOT = Path(__file__).resolve().parents[2]
A_MTA, B_MTA, SINK = "127.0.13.20", "127.0.13.21", "127.0.13.23"
A_WEB, A_MILTER, B_MILTER, DNS = "127.0.13.30", "127.0.13.31", "127.0.13.32", "127.0.13.33"


@pytest.fixture
def sink() -> Iterator[tuple[SinkHandler, int]]:
    """The last hop: an aiosmtpd sink on a loop of its own (the test itself is sync)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server, handler, port = asyncio.run_coroutine_threadsafe(start_sink(SINK), loop).result(10)
    yield handler, port
    loop.call_soon_threadsafe(server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture
def sendmails(e2e_dir: Path) -> Iterator[list[SendmailInstance]]:
    why = unavailable()
    if why:
        pytest.skip(f"Sendmail: {why}")
    made: list[SendmailInstance] = []
    yield made
    for s in made:
        s.stop()


def values(content: bytes, name: str) -> list[str]:
    fields, _ = headers.split_message(content)
    return headers.values_of(fields, name)


def test_two_sites_on_sendmail(e2e_dir, sendmails, sink, dns_factory, mailtalk_factory) -> None:
    sink_handler, sink_port = sink
    web_port, a_milter, b_milter = free_port(A_WEB), free_port(A_MILTER), free_port(B_MILTER)
    dns = dns_factory(DNS, {"_mailtalk.a.test": f"v=mailtalk1; api=http://{A_WEB}:{web_port}"})

    site_a = mailtalk_factory({
        "domains": {"names": ["a.test"]},
        "milter": {"socket": f"inet:{a_milter}@{A_MILTER}"},
        "presence": {"listen": f"{A_WEB}:{web_port}", "public_url": f"http://{A_WEB}:{web_port}"},
        "dns": {"nameservers": [dns.nameserver]},     # to find b.test's signing key
    }, name="site-a")
    r = site_a.command("user", "add", "alice@a.test", "--password-stdin", input="pw-alice\n")
    assert r.returncode == 0, r.stderr
    site_b = mailtalk_factory({
        "filter": {"mode": "milter", "milter_socket": f"inet:{b_milter}@{B_MILTER}",
                   "lookup_timeout": 2.0},
        "dns": {"nameservers": [dns.nameserver]},
    }, subcommand="filter", name="site-b", wait_endpoints=[f"{B_MILTER}:{b_milter}"])
    # b.test publishes its filter's lookup signing key (made at the filter's start); it
    # runs no presence service of its own here: a loopback api= stands in.
    dns.set_records({"_mailtalk.a.test": f"v=mailtalk1; api=http://{A_WEB}:{web_port}",
                     "_mailtalk.b.test": mailtalk_txt(
                         "http://127.0.0.1:9", site_b.state_dir / "lookup-signing.key")})

    mta_b = SendmailInstance(e2e_dir, "b", B_MTA, "b.test", (SINK, sink_port))
    mta_b.add_snippet(ROOT / "deploy/sendmail/receiver.mc",
                      {"inet:8895@127.0.0.1": f"inet:{b_milter}@{B_MILTER}"})
    sendmails.append(mta_b)
    mta_b.start()
    mta_a = SendmailInstance(e2e_dir, "a", A_MTA, "a.test", (B_MTA, mta_b.port))
    msa_port = mta_a.enable_msa({"alice@a.test": "sasl-pw"})
    mta_a.add_snippet(ROOT / "deploy/sendmail/sender.mc",
                      {"inet:8894@127.0.0.1": f"inet:{a_milter}@{A_MILTER}"})
    sendmails.append(mta_a)
    mta_a.start()

    status, transcript = swaks(A_MTA, msa_port, to="bob@b.test", from_="alice@a.test",
                               auth=("alice@a.test", "sasl-pw"), subject="Sendmail both ways",
                               headers={"X-Sender-Online": "yes; account=mallory@a.test; "
                                        "status=online; checked=2026-01-01T00:00:00Z; "
                                        "chat=<https://evil.test/c/x>",
                                        "X-Mail-ID": "forgedforgedforgedforged"},
                               body="Hello Bob, via Sendmail.")
    assert status == 0, transcript
    wait_for(lambda: sink_handler.got, timeout=30,
             what=f"the mail at the sink\n{site_a.log_tail()}\n{site_b.log_tail()}")
    (got,) = sink_handler.got
    assert got.rcpts == ["bob@b.test"]
    assert values(got.content, "X-Messenger-Account") == ["alice@a.test"]
    (mail_id,) = values(got.content, "X-Mail-ID")
    assert mail_id != "forgedforgedforgedforged"
    (online,) = values(got.content, "X-Sender-Online")
    h = online_header.parse_value(online)
    assert (h.state, h.status, h.account) == ("no", "offline", "alice@a.test"), online
    assert h.chat.startswith(f"http://{A_WEB}:{web_port}/"), online
    assert b"evil.test" not in got.content and b"Hello Bob, via Sendmail." in got.content
    site_b.wait_log(r"X-Sender-Online for alice@a.test: no to bob@b.test")


B_HOOK, B_DOVECOT = "127.0.13.34", "127.0.13.35"


def test_sendmail_lmtp_mode_two_recipients_own_links(e2e_dir, sendmails, dns_factory,
                                                     mailtalk_factory) -> None:
    """b.test in `[filter] mode = "lmtp"` (deploy/sendmail/receiver-lmtp.mc): Sendmail ->
    mailtalk's LMTP hook -> a private Dovecot. One mail to bob and carol: each mailbox
    (read over IMAP) holds one copy with that recipient's own link to the one chat of
    the mail, and what bob writes on his link's page reaches carol's."""
    from support.dovecot import Dovecot, unavailable as no_dovecot
    if why := no_dovecot():
        pytest.skip(why)
    dovecot = Dovecot(e2e_dir, {"bob@b.test": "bob-pw-imap-1", "carol@b.test": "carol-pw-imap-1"},
                      address=B_DOVECOT).start()
    try:
        _lmtp_round(e2e_dir, sendmails, dns_factory, mailtalk_factory, dovecot)
    finally:
        dovecot.stop()


def _lmtp_round(e2e_dir, sendmails, dns_factory, mailtalk_factory, dovecot) -> None:
    import urllib.request
    web_port, a_milter, hook = free_port(A_WEB), free_port(A_MILTER), free_port(B_HOOK)
    dns = dns_factory(DNS, {"_mailtalk.a.test": f"v=mailtalk1; api=http://{A_WEB}:{web_port}"})
    site_a = mailtalk_factory({
        "domains": {"names": ["a.test"]},
        "milter": {"socket": f"inet:{a_milter}@{A_MILTER}"},
        "presence": {"listen": f"{A_WEB}:{web_port}", "public_url": f"http://{A_WEB}:{web_port}"},
        "dns": {"nameservers": [dns.nameserver]},
    }, name="site-a")
    r = site_a.command("user", "add", "alice@a.test", "--password-stdin", input="pw-alice\n")
    assert r.returncode == 0, r.stderr
    site_b = mailtalk_factory({
        "filter": {"mode": "lmtp", "listen": f"{B_HOOK}:{hook}", "lmtp_next": dovecot.lmtp},
        "dns": {"nameservers": [dns.nameserver]},
    }, subcommand="filter", name="site-b-lmtp")
    dns.set_records({"_mailtalk.a.test": f"v=mailtalk1; api=http://{A_WEB}:{web_port}",
                     "_mailtalk.b.test": mailtalk_txt(
                         "http://127.0.0.1:9", site_b.state_dir / "lookup-signing.key")})
    mta_b = SendmailInstance(e2e_dir, "b-lmtp", B_MTA, "b.test", (SINK, 9))
    mta_b.snippets.append("LOCAL_DOMAIN(`b.test')dnl\n")      # local-host-names
    mta_b.add_snippet(ROOT / "deploy/sendmail/receiver-lmtp.mc",
                      {"TCP 127.0.0.1 10024": f"TCP {B_HOOK} {hook}"})
    sendmails.append(mta_b)
    mta_b.start()
    mta_a = SendmailInstance(e2e_dir, "a-lmtp", A_MTA, "a.test", (B_MTA, mta_b.port))
    msa_port = mta_a.enable_msa({"alice@a.test": "sasl-pw"})
    mta_a.add_snippet(ROOT / "deploy/sendmail/sender.mc",
                      {"inet:8894@127.0.0.1": f"inet:{a_milter}@{A_MILTER}"})
    sendmails.append(mta_a)
    mta_a.start()

    rcpts = ["bob@b.test", "carol@b.test"]
    status, transcript = swaks(A_MTA, msa_port, to=rcpts, from_="alice@a.test",
                               auth=("alice@a.test", "sasl-pw"), subject="Sendmail team mail",
                               extra=["--header", "Message-Id: <sm-lmtp-1@a.test>"],
                               body="Hello both, via Sendmail and LMTP.")
    assert status == 0, transcript
    links, mail_ids = {}, set()
    for rcpt in rcpts:
        (got,) = dovecot.wait_mail(rcpt, "<sm-lmtp-1@a.test>", timeout=40)
        (online,) = values(got, "X-Sender-Online")
        h = online_header.parse_value(online)
        assert (h.state, h.account) == ("no", "alice@a.test"), online
        assert h.chat is not None and h.chat.encode() in got.split(b"\r\n\r\n", 1)[1]
        links[rcpt] = h.chat
        mail_ids |= set(values(got, "X-Mail-ID"))
    assert links["bob@b.test"] != links["carol@b.test"]
    assert len(mail_ids) == 1                       # one mail: one chat for both
    site_a.wait_log(rf"mail {next(iter(mail_ids))} of alice@a\.test recorded", timeout=15)
    for rcpt, link in links.items():                # each link opens that chat, as rcpt
        with urllib.request.urlopen(link, timeout=10) as resp:
            page = resp.read().decode()
        assert "Sendmail team mail" in page and rcpt in page
    asyncio.run(_group_chat(links, next(iter(mail_ids))))
    site_b.wait_log(r"X-Sender-Online for alice@a\.test: no .*to 2 recipient\(s\); "
                    r"delivered to 2 of 2")


async def _group_chat(links: dict[str, str], mail_id: str) -> None:
    """bob and carol open their link pages' sockets, as the page does; bob writes, and
    carol's page gets it: one room for the mail, on a.test's presence service."""
    async with aiohttp.ClientSession() as bob_c, aiohttp.ClientSession() as carol_c:
        pages = {}
        for rcpt, c in (("bob@b.test", bob_c), ("carol@b.test", carol_c)):
            url = urlsplit(links[rcpt])
            origin = f"{url.scheme}://{url.netloc}"
            pages[rcpt] = await c.ws_connect(origin + "/ws" + url.path,
                                             headers={"Origin": origin})
            await next_of(pages[rcpt], "hello")
            await pages[rcpt].send_json({"type": "open"})
        await pages["bob@b.test"].send_json({"type": "send", "mail_id": mail_id,
                                             "text": "Both of us on Sendmail"})
        got = await next_of(pages["carol@b.test"], "message", text="Both of us on Sendmail")
        assert got["author"] == "bob@b.test", got
        for ws in pages.values():
            await ws.close()
