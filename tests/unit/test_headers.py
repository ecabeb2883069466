"""Raw header handling: removing every copy of a header, splitting without losing a byte."""

from __future__ import annotations

from mailtalk import headers


def test_strip_removes_every_case_and_folded_copy_and_nothing_else() -> None:
    raw = (b"Received: from x\r\n by y with ESMTP id 4ABCDEF12\r\n"
           b"x-sender-online: yes; account=evil@e.example; status=online;\r\n"
           b"\tchecked=2026-01-01T00:00:00Z; chat=<https://evil.example/>\r\n"
           b"Subject: X-Sender-Online: in a subject stays\r\n"
           b"X-SENDER-ONLINE : no\r\n"
           b"\r\n"
           b"X-Sender-Online: in the body stays\r\n")
    fields, rest = headers.split_message(raw)
    fields, removed = headers.without(fields, "X-Sender-Online")
    out = b"".join(fields) + rest
    assert removed == 2
    assert out == (b"Received: from x\r\n by y with ESMTP id 4ABCDEF12\r\n"
                   b"Subject: X-Sender-Online: in a subject stays\r\n"
                   b"\r\nX-Sender-Online: in the body stays\r\n")
    assert headers.queue_id_of(fields) == "4ABCDEF12"
    assert headers.queue_id_of(fields, "4XFWD") == "4XFWD"


def test_split_keeps_every_byte() -> None:
    samples = [b"", b"\r\n", b"A: b", b"A: b\r\n", b"From x\r\nA: b\r\n\r\n\xff\xfe\r\n",
               b" lead\r\nA: b\n\nbody", b"A: \xc3\xa9t\xc3\xa9\r\n c\r\n\r\n" + b"x" * 5000]
    for raw in samples:
        fields, rest = headers.split_message(raw)
        assert b"".join(fields) + rest == raw


def test_a_copy_hidden_behind_a_lone_cr_is_removed_with_its_field() -> None:
    import email
    import email.policy
    raw = (b"Subject: hi\r\nX-Note: x\rX-Sender-Online: yes; account=e@e; status=online;"
           b" checked=2026-01-01T00:00:00Z; chat=<https://evil.example/c/x>\r\n"
           b"X-Other: keep\rme\r\n\r\nbody\r\n")
    fields, rest = headers.split_message(raw)
    kept, removed = headers.without(fields, "X-Sender-Online")
    out = b"".join(kept) + rest
    assert removed == 1 and b"evil" not in out
    assert b"X-Other: keep\rme\r\n" in out                      # a lone CR alone stays
    for policy in (email.policy.compat32, email.policy.default):
        assert email.message_from_bytes(raw, policy=policy).get_all("X-Sender-Online")
        assert not email.message_from_bytes(out, policy=policy).get_all("X-Sender-Online")
