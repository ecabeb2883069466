"""The content filter over real SMTP: a real aiosmtpd server (ours) on loopback, a real
re-injection server we control (an aiosmtpd sink answering 250/4xx/5xx per recipient)
and a real SMTP client (smtplib). Only the presence lookup is a fake: it stands in for
DNS and HTTP, which test_lookup_client.py covers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

import pytest

from mailtalk.config import parse_text
from mailtalk.lookup import PresenceLookup
from mailtalk_milter import filter as filt
from mailtalk import headers, online_header, receiving
from support import free_port
from support.smtp_client import send
from support.smtp_sink import start_sink
from support.filter_harness import HOST, SINK_HOST, XFWD, Harness, start_filter
from support.fake_lookup import CLAIM, MAIL_ID, FakeLookup, msg
from support.static_dns import StaticResolver

SILENT_HOST = "127.0.13.9"

@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness, things = await start_filter(FakeLookup("online"), state_dir=tmp_path)
    yield harness
    await things[0].close()
    things[1].close()


def online_of(content: bytes) -> list[online_header.SenderOnline]:
    fields, _ = headers.split_message(content)
    return [online_header.parse_value(headers.field_value(f)) for f in fields
            if headers.field_name(f) == b"x-sender-online"]


async def test_unclaimed_mail_goes_in_one_transaction_with_xforward(h: Harness) -> None:
    forged = "X-Sender-Online: yes; account=evil@e.example; status=online; checked=2026-01-01T00:00:00Z; chat=<https://evil.example/c/x>"
    raw = msg("Subject: plain", forged, body="8-bit: Grüße\r\n".encode())
    r = await h.send(["bob@b.example", "carol@b.example"], raw, xforward=XFWD,
                     mail_options=["BODY=8BITMIME"])
    assert r.data is not None and r.data[0] == 250
    assert len(h.sink.got) == 1
    got = h.sink.got[0]
    assert got.rcpts == ["bob@b.example", "carol@b.example"]
    assert online_of(got.content) == []          # no claim: no header, forged one gone
    assert b"evil" not in got.content
    assert got.content.endswith(b"\r\n\r\n8-bit: Gr\xc3\xbc\xc3\x9fe\r\n")
    assert "IDENT=4FQX1234ZZ" in " ".join(got.xforward) and "ADDR=192.0.2.7" in " ".join(got.xforward)
    assert h.lookup.calls == []


async def test_each_recipient_gets_its_own_link_in_its_own_transaction(h: Harness) -> None:
    r = await h.send(["bob@b.example", "carol@b.example"], msg(*CLAIM, "Subject: hi"),
                     xforward=XFWD)
    assert r.data[0] == 250
    assert sorted(g.rcpts[0] for g in h.sink.got) == ["bob@b.example", "carol@b.example"]
    for g in h.sink.got:
        (online,) = online_of(g.content)
        assert len(g.rcpts) == 1
        assert online.state == "yes" and online.chat.endswith("/c/" + g.rcpts[0].split("@")[0])
    assert h.lookup.calls == [("alice@a.example", MAIL_ID, ["bob@b.example", "carol@b.example"])]


async def test_next_hop_5xx_and_4xx_per_recipient_are_passed_through(h: Harness) -> None:
    r = await h.send(["bob@b.example", "rej5@b.example", "tmp4@b.example"], msg(*CLAIM))
    assert r.rcpt["bob@b.example"][0] == 250
    assert r.rcpt["rej5@b.example"][0] == 550 and b"no such user" in r.rcpt["rej5@b.example"][1]
    assert r.rcpt["tmp4@b.example"][0] == 450
    assert r.data[0] == 250
    assert [g.rcpts for g in h.sink.got] == [["bob@b.example"]]


async def test_4xx_at_data_is_4xx_and_broken_connection_is_451(h: Harness) -> None:
    h.sink.data_replies = ["452 4.3.1 Insufficient system storage"]
    r = await h.send(["bob@b.example"], msg("Subject: x"))
    assert r.data[0] == 452
    h.sink.data_replies = ["drop"]
    r = await h.send(["bob@b.example"], msg("Subject: x"))
    assert r.data[0] == 451
    assert h.sink.got == []
    r = await h.send(["bob@b.example"], msg("Subject: x"))   # and it recovers
    assert r.data[0] == 250 and len(h.sink.got) == 1


async def test_dead_reinjection_is_451_never_5xx() -> None:
    harness, things = await start_filter(FakeLookup(), reinject_port=free_port(SINK_HOST))
    try:
        r = await harness.send(["bob@b.example"], msg("Subject: x"))
        assert r.mail[0] == 451 and r.data is None
    finally:
        await things[0].close()
        things[1].close()


async def test_exception_of_ours_is_451(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    async def boom(*a, **kw):
        raise RuntimeError("a bug of ours")
    monkeypatch.setattr(receiving, "prepare", boom)
    r = await h.send(["bob@b.example"], msg("Subject: x"))
    assert r.data[0] == 451
    assert h.sink.got == []
    monkeypatch.undo()
    r = await h.send(["bob@b.example"], msg("Subject: x"))
    assert r.data[0] == 250


async def test_a_silent_presence_service_delays_the_mail_by_the_lookup_timeout_only() -> None:
    """The real lookup client, DNS from an injected resolver, and a service that
    accepts the connection and never answers: the mail goes on with `unknown`."""
    silent = await asyncio.start_server(lambda r, w: None, SILENT_HOST, 0)
    port = silent.sockets[0].getsockname()[1]
    cfg = parse_text("[filter]\nlookup_timeout = 0.3\n", "test")
    lookup = PresenceLookup(cfg, resolver=StaticResolver(
        {"_mailtalk.a.example": [f"v=mailtalk1; api=http://{SILENT_HOST}:{port}"]}))
    harness, things = await start_filter(lookup, lookup_timeout=0.3)
    try:
        # A bound with slack for a loaded machine; unbounded, it would never end.
        r = await asyncio.wait_for(harness.send(["bob@b.example"], msg(*CLAIM)), 20)
        assert r.data[0] == 250
        (online,) = online_of(harness.sink.got[0].content)
        assert online.state == "unknown" and online.chat is None
        assert online.account == "alice@a.example"
    finally:
        await things[0].close()
        things[1].close()
        await lookup.close()
        silent.close()


async def test_partial_failure_defers_and_the_retry_delivers_each_once(h: Harness) -> None:
    rcpts = ["bob@b.example", "carol@b.example"]
    h.sink.data_replies = ["250 2.0.0 Ok", "451 4.3.0 later"]
    r = await h.send(rcpts, msg(*CLAIM), xforward=XFWD)
    assert r.data[0] == 451
    assert [g.rcpts for g in h.sink.got] == [["bob@b.example"]]
    r = await h.send(rcpts, msg(*CLAIM), xforward=XFWD)      # Postfix retries the same mail
    assert r.data[0] == 250
    assert sorted(g.rcpts[0] for g in h.sink.got) == rcpts   # carol now, bob not again


async def test_5xx_at_data_before_anything_was_delivered_is_passed(h: Harness) -> None:
    h.sink.data_replies = ["554 5.7.1 Message refused by policy"]
    r = await h.send(["bob@b.example"], msg("Subject: x"))
    assert r.data[0] == 554


async def test_smtputf8_address_and_header_pass(h: Harness) -> None:
    raw = "Subject: ünïcödé\r\n\r\nbody\r\n".encode()
    r = await h.send(["bøb@b.example"], raw, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    assert r.data[0] == 250
    assert h.sink.got[0].rcpts == ["bøb@b.example"]
    assert h.sink.got[0].content.endswith(raw)


async def test_stop_lets_a_message_in_flight_finish(h: Harness) -> None:
    h.sink.data_delay = 0.5
    sending = asyncio.ensure_future(h.send(["bob@b.example"], msg("Subject: x")))
    deadline = asyncio.get_running_loop().time() + 10
    while not h.running.handler.busy:                  # our DATA reply is pending
        assert asyncio.get_running_loop().time() < deadline, "DATA never reached the filter"
        await asyncio.sleep(0.01)
    await h.running.close()
    r = await sending
    assert r.data[0] == 250 and len(h.sink.got) == 1


async def test_message_over_the_size_limit_is_deferred_never_bounced() -> None:
    """aiosmtpd's own answer would be 552 (a bounce of a mail Postfix already accepted)."""
    sink_server, sink, sink_port = await start_sink(SINK_HOST)
    port = free_port(HOST)
    cfg = parse_text(f'[filter]\nlisten = "{HOST}:{port}"\nreinject = "{SINK_HOST}:{sink_port}"\n'
                     f'max_message_size = 2048\n', "test")
    running = await filt.start(cfg, asyncio.Event(), lookup=FakeLookup())
    try:
        big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 100
        # SIZE declared at MAIL FROM (as Postfix does): refused there, with a 4xx.
        r = await asyncio.to_thread(send, HOST, port, "alice@a.example", ["bob@b.example"],
                                    big, mail_options=[f"SIZE={len(big)}"])
        assert r.mail[0] == 452 and r.data is None
        # No SIZE: found out during DATA, also a 4xx.
        r = await asyncio.to_thread(send, HOST, port, "alice@a.example", ["bob@b.example"], big)
        assert r.data[0] == 452
        assert sink.got == []
    finally:
        await running.close()
        sink_server.close()


def alternative(*claim: str) -> bytes:
    """A multipart/alternative mail as a mail client writes it, with the claim."""
    from email.message import EmailMessage
    from email.policy import SMTP
    m = EmailMessage()
    for line in claim:
        name, _, value = line.partition(": ")
        m[name] = value
    m["From"] = "Alice Example <alice@a.example>"
    m["Subject"] = "plans"
    m.set_content("Shall we meet on Friday?\n")
    m.add_alternative("<html><body><p>Shall we meet on Friday?</p></body></html>\n",
                      subtype="html")
    return m.as_bytes(policy=SMTP)


def parts_of(content: bytes) -> dict[str, str]:
    import email
    from email.policy import default
    msg = email.message_from_bytes(content, policy=default)
    return {p.get_content_type(): p.get_content().replace("\r\n", "\n") for p in msg.walk()
            if p.get_content_maintype() == "text"}


async def test_each_copy_carries_a_notice_with_its_own_link(h: Harness) -> None:
    raw = alternative(*CLAIM)
    r = await h.send(["bob@b.example", "carol@b.example"], raw, xforward=XFWD)
    assert r.data[0] == 250
    assert len(h.sink.got) == 2
    for got in h.sink.got:
        (rcpt,) = got.rcpts
        (online,) = online_of(got.content)
        link = f"https://chat.a.example/c/{rcpt.split('@')[0]}"
        assert online.chat == link
        parts = parts_of(got.content)
        plain, html = parts["text/plain"], parts["text/html"]
        assert plain.startswith("mailtalk: Alice Example <alice@a.example> was online")
        assert f"Chat about this mail: {link}\n\nShall we meet on Friday?" in plain
        assert 'data-mailtalk="notice"' in html and f'<a href="{link}">' in html
        assert html.index("data-mailtalk") < html.index("<p>Shall we meet")
        other = "carol" if rcpt.startswith("bob") else "bob"
        assert f"/c/{other}" not in got.content.decode()


async def test_no_notice_when_off_or_without_a_link(tmp_path: Path) -> None:
    harness, things = await start_filter(FakeLookup("online"), extra="notice = false")
    try:
        raw = alternative(*CLAIM)
        assert (await harness.send(["bob@b.example"], raw)).data[0] == 250
        out = harness.sink.got[0].content
        assert online_of(out)[0].chat is not None       # the header still has the link
        assert out.endswith(raw)                        # and the message is as it came
    finally:
        await things[0].close()
        things[1].close()
    harness, things = await start_filter(FakeLookup("unknown", links={}))
    try:
        raw = alternative(*CLAIM)
        assert (await harness.send(["bob@b.example"], raw)).data[0] == 250
        assert harness.sink.got[0].content.endswith(raw)
    finally:
        await things[0].close()
        things[1].close()


async def test_a_template_that_does_not_load_stops_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "notice.html"
    bad.write_text("{% if %}")
    with pytest.raises(Exception) as e:
        await start_filter(FakeLookup(), extra=f'notice_html_template = "{bad}"')
    assert "[filter] notice_*_template" in str(e.value) and str(bad) in str(e.value)
