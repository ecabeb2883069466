"""The receiving milter's logic through pymilter's TestCtx (no MTA, no sockets).
The lookup is a fake (it stands in for DNS and HTTP); it runs on a real asyncio loop
in a thread of its own, as it does beside libmilter's threads in `mailtalk filter`."""

from __future__ import annotations

import asyncio
import email
import threading
from typing import Iterator

import Milter
import pytest
from support.milter_ctx import RecordingCtx

from mailtalk import online_header
from mailtalk_milter.receiving_milter import Engine, install
from support.fake_lookup import CLAIM, FakeLookup


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    t = threading.Thread(target=lp.run_forever, daemon=True)
    t.start()
    yield lp
    lp.call_soon_threadsafe(lp.stop)
    t.join(5)
    lp.close()


def run(loop: asyncio.AbstractEventLoop, lookup: FakeLookup, headers: list[tuple[str, str]],
        rcpts: list[str], timeout: float = 2.0) -> RecordingCtx:
    install(Engine(loop, lookup, timeout))
    ctx = RecordingCtx()
    assert ctx._connect() == Milter.CONTINUE
    ctx._setsymval("i", "SMQID1")
    raw = "".join(f"{n}: {v}\r\n" for n, v in headers).encode() + b"\r\nbody\r\n"
    ctx._msg = email.message_from_bytes(raw)
    ctx._envfrom("<alice@a.example>")
    for r in rcpts:
        ctx._envrcpt(f"<{r}>")
    for n, v in headers:
        ctx._priv.header_bytes(n, v.encode())
    ctx._priv.body(b"body\r\n")
    assert ctx._eom() == Milter.CONTINUE
    return ctx


CLAIM_HEADERS = [tuple(c.split(": ", 1)) for c in CLAIM]
FORGED = [("X-Sender-Online", "yes; account=evil@e; status=online; checked=x; chat=<https://e/>"),
          ("x-sender-online", "no")]


def test_one_recipient_gets_its_link_and_forged_copies_go(loop) -> None:
    lookup = FakeLookup("online")
    ctx = run(loop, lookup, CLAIM_HEADERS + FORGED, ["bob@b.example"])
    assert [a for a in ctx.actions if a[0] == "chg"] == [("chg", "X-Sender-Online", 2),
                                                       ("chg", "X-Sender-Online", 1)]
    (add,) = [a for a in ctx.actions if a[0] == "add"]
    h = online_header.parse_value(add[2])
    assert h.state == "yes" and h.chat == "https://chat.a.example/c/bob"
    assert len(lookup.calls) == 1


def test_several_recipients_get_unknown_and_no_link(loop) -> None:
    lookup = FakeLookup("online")
    ctx = run(loop, lookup, CLAIM_HEADERS, ["bob@b.example", "carol@b.example"])
    (add,) = [a for a in ctx.actions if a[0] == "add"]
    assert add[2].startswith("unknown; account=alice@a.example;") and "chat" not in add[2]
    assert lookup.calls == []


def test_unclaimed_mail_gets_no_header_and_forged_copies_go(loop) -> None:
    lookup = FakeLookup("online")
    ctx = run(loop, lookup, [("Subject", "plain")] + FORGED, ["bob@b.example"])
    assert [a for a in ctx.actions if a[0] == "chg"] == [("chg", "X-Sender-Online", 2),
                                                       ("chg", "X-Sender-Online", 1)]
    assert [a for a in ctx.actions if a[0] == "add"] == []
    assert lookup.calls == []


def test_slow_lookup_gives_unknown_in_time(loop) -> None:
    ctx = run(loop, FakeLookup(delay=30), CLAIM_HEADERS, ["bob@b.example"], timeout=0.2)
    (add,) = [a for a in ctx.actions if a[0] == "add"]
    assert add[2].startswith("unknown;")


async def test_milter_mode_refuses_to_share_a_process_with_the_sending_milter() -> None:
    from mailtalk.config import ConfigError, parse_text
    from mailtalk_milter import filter as filt
    cfg = parse_text('[domains]\nnames = ["b.test"]\n[milter]\n[filter]\nmode = "milter"\n', "x.toml")
    with pytest.raises(ConfigError, match=r"x.toml: \[filter\] mode"):
        await filt.start(cfg, asyncio.Event(), lookup=FakeLookup())
