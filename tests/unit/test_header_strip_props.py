"""Property-based tests of removing our header on generated header blocks (hypothesis).

A header block is built from ordinary fields (names, values with 8-bit bytes, folded
or not) and copies of X-Sender-Online in any case, with white space before the colon,
folded, CRLF or bare LF line ends, and hidden behind a lone CR in another field. After
`receiving.prepare` (the path every receiving mode takes):
- no field that any reader could take for X-Sender-Online survives: none by our own
  parser, none by Python's email parser (which also splits on a lone CR);
- every other byte is kept, in order: the result is the input with exactly the
  generated copies (and the fields hiding one) cut out, plus the header we add.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailtalk import headers, receiving

NAMES = st.sampled_from([b"Subject", b"X-Note", b"Received", b"X-Sender-Onliner",
                         b"X-Sender", b"Comments", b"To"])
VALUE_BYTES = st.binary(min_size=0, max_size=40).map(
    lambda b: bytes(c for c in b if c not in b"\r\n\x00") or b"v")
OURS_NAME = st.sampled_from(["X-Sender-Online", "x-sender-online", "X-SENDER-ONLINE",
                             "x-Sender-online"])


@st.composite
def field(draw: st.DrawFn, eol: bytes) -> tuple[bytes, bool]:
    """(one field's bytes, whether it is or hides a copy of ours)."""
    kind = draw(st.sampled_from(["plain", "folded", "ours", "ours-folded", "hidden"]))
    value = draw(VALUE_BYTES)
    if kind in ("plain", "folded"):
        name = draw(NAMES)
        body = b" " + value + (eol + b"\t" + draw(VALUE_BYTES) if kind == "folded" else b"")
        return name + b":" + body + eol, False
    ours = draw(OURS_NAME).encode() + draw(st.sampled_from([b"", b" ", b"\t", b"  "]))
    if kind == "hidden":         # a lone CR inside another field, then ours
        return (draw(NAMES) + b": " + value + b"\r" + ours + b": yes; chat=<https://e/x>"
                + eol, True)
    fold = eol + b" checked=2026-01-01T00:00:00Z" if kind == "ours-folded" else b""
    return ours + b": yes; account=e@e.example" + fold + eol, True


@st.composite
def message(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(the raw message, the same with every generated copy of ours cut out)."""
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    fields = draw(st.lists(field(eol), min_size=1, max_size=12))
    body = eol + draw(st.binary(max_size=60)).replace(b"\r", b"") + eol
    raw = b"".join(f for f, _ in fields) + body
    kept = b"".join(f for f, ours in fields if not ours) + body
    return raw, kept


def _readers_see_ours(raw: bytes) -> bool:
    fields, _ = headers.split_message(raw)
    if any(headers.field_name(f) == b"x-sender-online" for f in fields):
        return True
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    return parsed.get_all("X-Sender-Online") is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message())
def test_no_copy_of_ours_survives_and_every_other_byte_is_kept(case: tuple[bytes, bytes]
                                                               ) -> None:
    raw, kept = case
    prepared = asyncio.run(receiving.prepare(raw, ["bob@b.example"], None))
    out = prepared.message_with(b"")            # no claim: nothing added
    assert out == kept
    assert not _readers_see_ours(out)
    header = b"X-Sender-Online: unknown; account=a@a.example; status=unknown\r\n"
    assert prepared.message_with(header) == header + kept


def test_the_generator_makes_what_it_claims() -> None:
    """The strategy does produce the hard cases (a check that the property is not
    vacuous): a copy hidden behind a lone CR is seen by the email parser."""
    raw = b"X-Note: a\rX-Sender-Online: yes; chat=<https://e/x>\r\nSubject: s\r\n\r\nb\r\n"
    assert _readers_see_ours(raw)
    assert re.search(rb"(?i)x-sender-online", raw)
