"""The X-Sender-Online grammar: format, fold, parse, and refuse what could break a header."""

from __future__ import annotations

import pytest

from mailtalk import online_header
from mailtalk.online_header import SenderOnline
from support.fake_lookup import NOW


def test_format_parse_round_trip_and_folding() -> None:
    h = SenderOnline("yes", "alice@a.example", "busy", NOW, "https://chat.a.example/c/T0K")
    field = online_header.format_field(h)
    assert field.startswith(b"X-Sender-Online: yes; account=alice@a.example; status=busy;")
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))
    assert field.endswith(b"\r\n") and b"\r\n " in field      # folded at "; " only
    assert online_header.parse_value(field.decode().split(":", 1)[1]) == h
    u = online_header.unknown(None, NOW)
    assert online_header.format_value(u) == "unknown; status=unknown; checked=2026-11-29T07:00:00Z"


@pytest.mark.parametrize("bad", [
    SenderOnline("yes", "alice@a.example", "online", NOW, None),          # yes needs chat
    SenderOnline("yes", "a\r\nX-Evil: 1@a.example", "online", NOW, "https://x/c"),
    SenderOnline("yes", "alice@a.example", "online", NOW, "https://x/c>\r\nX-Evil: 1"),
    SenderOnline("yes", "alice@a.example", "online", NOW, "javascript:alert(1)"),
    SenderOnline("yes", "alice@a.example", "online", NOW, "https://x/" + "c" * 1000),
    SenderOnline("maybe", "alice@a.example", "online", NOW, "https://x/c"),
])
def test_unsafe_values_are_refused(bad: SenderOnline) -> None:
    with pytest.raises(ValueError):
        online_header.format_value(bad)


@pytest.mark.parametrize("value", [
    "yes; account=a@b; status=offline; checked=2026-11-29T07:00:00Z; chat=<https://x/c>",
    "yes; account=a@b; status=online; checked=yesterday; chat=<https://x/c>",
    "no; account=a@b; status=offline; checked=2026-11-29T07:00:00Z",
    "unknown; status=unknown; checked=2026-11-29T07:00:00Z; evil=1",
])
def test_parse_refuses_what_breaks_the_grammar(value: str) -> None:
    with pytest.raises(ValueError):
        online_header.parse_value(value)
