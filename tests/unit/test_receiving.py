"""The transport-free receiving logic: reading the claim, one lookup, a header per recipient."""

from __future__ import annotations

import pytest

from mailtalk import headers, notice, online_header, receiving
from support.fake_lookup import CLAIM, MAIL_ID, NOW, FakeLookup, msg

# --- the claim


@pytest.mark.parametrize("lines,problem", [
    ((), "0 X-Messenger-Account headers"),
    (CLAIM + ("X-Messenger-Account: bob@a.example",), "2 X-Messenger-Account headers"),
    (CLAIM + (f"X-Mail-ID: {MAIL_ID}",), "2 X-Mail-ID headers"),
    (("X-Messenger-Account: alice@a.example", "X-Mail-ID: short"), "malformed X-Mail-ID"),
    (("X-Messenger-Account: not an account", f"X-Mail-ID: {MAIL_ID}"), "malformed X-Messenger-Account"),
])
def test_claim_problems(lines: tuple[str, ...], problem: str) -> None:
    fields, _ = headers.split_message(msg(*lines))
    assert receiving.read_claim(fields).problem == problem


def test_claim_folded_header_is_read() -> None:
    raw = b"X-Messenger-Account:\r\n alice@A.Example\r\nX-Mail-ID: " + MAIL_ID.encode() + b"\r\n\r\n"
    claim = receiving.read_claim(headers.split_message(raw)[0])
    assert (claim.account, claim.mail_id, claim.problem) == ("alice@a.example", MAIL_ID, None)


# --- the whole step

async def test_per_recipient_links_and_unchanged_bytes() -> None:
    body = "Grüße\r\n".encode() + b"y" * 3000 + b"\r\n.\r\n..dots\r\n"
    raw = msg("Received: by b with ESMTP id 4QQQQQQQ", *CLAIM,
              "X-Sender-Online: yes; account=evil@e; status=online; checked=x; chat=<https://e/>",
              "Subject: hi", body=body)
    lookup = FakeLookup("away")
    p = await receiving.prepare(raw, ["bob@b.example", "carol@b.example"], lookup,
                                clock=lambda: NOW)
    assert p.qid == "4QQQQQQQ" and p.removed == 1
    assert lookup.calls == [("alice@a.example", MAIL_ID, ["bob@b.example", "carol@b.example"])]
    groups = p.groups()
    assert [g[1] for g in groups] == [["bob@b.example"], ["carol@b.example"]]
    out = p.message_with(groups[0][0])
    parsed = online_header.parse_value(groups[0][0].decode().split(":", 1)[1])
    assert parsed.chat == "https://chat.a.example/c/bob" and parsed.state == "yes"
    assert out.count(b"X-Sender-Online") == 1 and b"evil" not in out
    # Everything but the removed line and the prepended header is byte for byte the same.
    assert out[len(groups[0][0]):] == raw.replace(
        b"X-Sender-Online: yes; account=evil@e; status=online; checked=x; chat=<https://e/>\r\n", b"")


async def test_unknown_answer_error_and_missing_link_give_unknown() -> None:
    raw = msg(*CLAIM)
    p = await receiving.prepare(raw, ["bob@b.example"], FakeLookup("unknown", links={}),
                                clock=lambda: NOW)
    assert p.headers["bob@b.example"].startswith(b"X-Sender-Online: unknown; account=alice@a.example")
    assert b"chat=" not in p.headers["bob@b.example"]
    assert "(no answer)" not in p.summary
    p = await receiving.prepare(raw, ["bob@b.example"], FakeLookup(error=RuntimeError("x")))
    assert b"unknown" in p.headers["bob@b.example"] and "(lookup failed)" in p.summary
    p = await receiving.prepare(raw, ["bob@b.example", "carol@b.example"],
                                FakeLookup(links={"bob@b.example": "https://c/c/1"}))
    assert b"yes;" in p.headers["bob@b.example"] and b"chat=" not in p.headers["carol@b.example"]


async def test_unknown_with_a_link_keeps_the_link_and_the_notice() -> None:
    """A known mail whose sender's presence the service could not tell: the header
    says unknown and carries the link; the notice gives the link without a state."""
    raw = msg(*CLAIM, "Content-Type: text/plain", body=b"Hello\r\n")
    p = await receiving.prepare(raw, ["bob@b.example"], FakeLookup("unknown"),
                                notices=notice.default_templates(), clock=lambda: NOW)
    parsed = online_header.parse_value(p.headers["bob@b.example"].decode().split(":", 1)[1])
    assert (parsed.state, parsed.status, parsed.chat) == (
        "unknown", "unknown", "https://chat.a.example/c/bob")
    out = p.message_with(p.headers["bob@b.example"])
    assert b"whether they were online could not be told" in out
    assert b"https://chat.a.example/c/bob" in out.split(b"\r\n\r\n", 1)[1]


async def test_no_claim_asks_nobody_and_adds_no_header() -> None:
    """The header always names an account: a mail without a usable claim gets none,
    and forged copies are removed all the same."""
    lookup = FakeLookup()
    forged = "X-Sender-Online: yes; account=e@e.example; status=online; checked=2026-01-01T00:00:00Z"
    for raw in (msg("Subject: plain", forged),
                msg("X-Messenger-Account: alice@a.example", "Subject: no Mail-ID"),
                msg(*CLAIM, *CLAIM, "Subject: two claims")):
        p = await receiving.prepare(raw, ["bob@b.example"], lookup, clock=lambda: NOW)
        assert lookup.calls == []
        assert p.headers["bob@b.example"] == b""
        assert b"X-Sender-Online" not in p.message_with(b"")
        assert p.summary.startswith("no X-Sender-Online (")


async def test_a_claim_without_an_answer_is_unknown_with_its_account() -> None:
    p = await receiving.prepare(msg(*CLAIM), ["bob@b.example"], FakeLookup(error=OSError()),
                                clock=lambda: NOW)
    assert p.headers["bob@b.example"].startswith(
        b"X-Sender-Online: unknown; account=alice@a.example; status=unknown;")


async def test_recipients_are_asked_once_each_in_one_lookup() -> None:
    """One dedupe here; the lookup client splits into requests (test_lookup_client)."""
    lookup = FakeLookup("offline")
    rcpts = [f"u{i}@b.example" for i in range(250)]
    p = await receiving.prepare(msg(*CLAIM), rcpts + rcpts[:3], lookup)
    assert [len(c[2]) for c in lookup.calls] == [250]
    assert all(h.startswith(b"X-Sender-Online: no;") for h in p.headers.values())
    assert len(p.groups()) == 250
