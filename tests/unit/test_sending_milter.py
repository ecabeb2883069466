"""The sending milter's logic through pymilter's TestCtx: no MTA, no sockets."""

from __future__ import annotations

import email
import json
import email.policy
from email.message import Message
from pathlib import Path
from typing import Any

import Milter
import pytest
from support.milter_ctx import RecordingCtx

from mailtalk.config import parse_text
from mailtalk.mailid import MailIds, is_well_formed
from mailtalk.mailrecord import MailRecord
from mailtalk_milter.outbox import Outbox
from mailtalk_milter.sending import Engine, install

KEY = bytes(range(32))
CFG = parse_text('[domains]\nnames = ["a.test"]\n[milter]\nbody_text_limit = 200\n', "test")


class ListSink:
    def __init__(self) -> None:
        self.records: list[MailRecord] = []

    def add(self, record: MailRecord) -> None:
        self.records.append(record)


class BrokenSink:
    def add(self, record: MailRecord) -> None:
        raise OSError("disk full")


def run(raw: bytes, login: str | None = None, sink: Any = None,
        rcpts: tuple[str, ...] = ("bob@b.test",), qid: str = "4XyZq1",
        site_key: bytes = b"") -> tuple[RecordingCtx, Message, Any]:
    """Feed one message the way libmilter does (NOREPLY callbacks included)."""
    sink = ListSink() if sink is None else sink
    install(Engine(CFG.domains, MailIds(KEY, 30), sink, CFG.milter.body_text_limit, site_key))
    ctx = RecordingCtx()
    assert ctx._connect() == Milter.CONTINUE
    if login is not None:
        ctx._setsymval("{auth_authen}", login)
    ctx._setsymval("i", qid)
    ctx._msg = email.message_from_bytes(raw)
    assert ctx._envfrom("<sender@a.test>") in (Milter.CONTINUE, Milter.NOREPLY)
    for r in rcpts:
        assert ctx._envrcpt(f"<{r}>") in (Milter.CONTINUE, Milter.NOREPLY)
    head, _, body = raw.partition(b"\r\n\r\n")
    for name, value in email.message_from_bytes(head + b"\r\n\r\n").items():
        assert ctx._priv.header_bytes(name, value.encode("ascii", "surrogateescape")) \
            in (Milter.CONTINUE, Milter.NOREPLY)
    for i in range(0, len(body), 65536):
        assert ctx._priv.body(body[i:i + 65536]) in (Milter.CONTINUE, Milter.NOREPLY)
    assert ctx._eom() == Milter.CONTINUE           # never a reject or tempfail of ours
    return ctx, ctx._msg, sink


PLAIN = (b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\n"
         b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=\r\n"
         b"Date: Sun, 29 Nov 2026 08:00:00 +0100\r\nMessage-ID: <m1@a.test>\r\n"
         b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Transfer-Encoding: 8bit\r\n\r\n"
         b"Hallo Bob,\r\nbis morgen. \xc3\xa4\r\n")

FORGED = (b"X-Mail-ID: forgedforgedforgedforged00\r\nx-messenger-account: mallory@a.test\r\n"
          b"X-MESSENGER-ACCOUNT: eve@a.test\r\nX-Sender-Online: yes; account=x\r\n"
          b"X-Mail-Id: forged2forged2forged2forged2\r\n")


def ours(msg: Message) -> list[str]:
    return [k for k in msg.keys() if k.lower() in
            ("x-messenger-account", "x-mail-id", "x-sender-online")]


def test_authenticated_gets_both_headers_and_a_verifiable_mail_id() -> None:
    ctx, msg, sink = run(PLAIN, login="alice")
    assert msg["X-Messenger-Account"] == "alice@a.test"
    mail_id = msg["X-Mail-ID"]
    assert is_well_formed(mail_id)
    assert MailIds(KEY, 30).verify("alice@a.test", mail_id)
    assert not MailIds(KEY, 30).verify("bob@a.test", mail_id)
    assert [a[0] for a in ctx.actions] == ["add", "add"]
    (rec,) = sink.records
    assert rec.mail_id == mail_id and rec.account == "alice@a.test"
    assert rec.queue_id == "4XyZq1"


def test_record_content_plain_text() -> None:
    rcpts = ("bob@b.test", "carol@C.Test", '"odd one"@c.test', "bob@b.test")
    _, _, sink = run(PLAIN, login="alice@a.test", rcpts=rcpts)
    (rec,) = sink.records
    assert rec.subject == "Grüße aus Köln"
    assert rec.message_id == "<m1@a.test>"
    assert rec.date == "2026-11-29T07:00:00Z"
    assert rec.recipients == ["bob@b.test", "carol@c.test"]
    assert rec.body_text == "Hallo Bob,\nbis morgen. ä"
    assert rec.names == {"alice@a.test": "Alice"}      # bob@b.test came without a name


def test_record_names_from_from_to_and_cc() -> None:
    from mailtalk.mailrecord import display_names
    names = display_names([
        ("From", b"=?utf-8?q?J=C3=BCrgen?= <juergen@a.test>"),
        ("To", b'"Bob, B." <bob@b.test>, carol@c.test, "bob@b.test" <x@b.test>'),
        ("Cc", b'"bell\x07" <dave@d.test>, Eve <EVE@E.test>'), ("Bcc", b"Hidden <h@h.test>")])
    assert names == {"juergen@a.test": "Jürgen", "bob@b.test": "Bob, B.",
                     "x@b.test": "bob@b.test", "eve@e.test": "Eve"}


def test_record_body_from_html_only_mail_in_base64() -> None:
    import base64
    html = ("<html><head><style>p{}</style><script>evil()</script></head><body>"
            "<p>Hello &amp; welcome</p><p>second <b>line</b></p></body></html>")
    raw = (b"From: alice@a.test\r\nSubject: plain ascii\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(html.encode()).replace(b"\n", b"\r\n"))
    _, _, sink = run(raw, login="alice")
    (rec,) = sink.records
    assert rec.body_text == "Hello & welcome\n\nsecond line"
    assert rec.message_id == "" and rec.date == ""


def test_record_prefers_text_plain_in_multipart_and_cuts_at_limit() -> None:
    long_text = "ö" * 300                                    # 600 bytes of UTF-8
    raw = (b"From: alice@a.test\r\nSubject: mp\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/alternative; boundary=BB\r\n\r\n"
           b"--BB\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n"
           b"--BB\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n" + long_text.encode() + b"\r\n--BB--\r\n")
    _, _, sink = run(raw, login="alice")
    (rec,) = sink.records
    assert rec.body_text == "ö" * 100                        # body_text_limit = 200 bytes


def test_unauthenticated_gets_no_headers_and_no_record() -> None:
    ctx, msg, sink = run(PLAIN, login=None)
    assert ours(msg) == [] and ctx.actions == [] and sink.records == []


def test_foreign_domain_login_gets_no_headers() -> None:
    ctx, msg, sink = run(PLAIN, login="alice@evil.test")
    assert ours(msg) == [] and ctx.actions == [] and sink.records == []


@pytest.mark.parametrize("login", [None, "alice", "alice@evil.test"])
def test_forged_copies_are_deleted_in_every_case(login: str | None) -> None:
    ctx, msg, sink = run(FORGED + PLAIN, login=login)
    deletions = [a for a in ctx.actions if a[0] == "chg"]
    # Per name, 1-based, counted case-insensitively, last copy first.
    assert deletions == [("chg", "X-Mail-ID", 2), ("chg", "X-Mail-ID", 1),
                         ("chg", "X-Messenger-Account", 2), ("chg", "X-Messenger-Account", 1),
                         ("chg", "X-Sender-Online", 1)]
    if login == "alice":
        assert msg.get_all("X-Messenger-Account") == ["alice@a.test"]
        assert len(msg.get_all("X-Mail-ID")) == 1
        assert "forged" not in msg["X-Mail-ID"] and len(sink.records) == 1
    else:
        assert ours(msg) == []


def test_internal_error_lets_the_mail_pass_unchanged() -> None:
    ctx, msg, _ = run(PLAIN, login="alice", sink=BrokenSink())
    assert ctx.actions == [] and ours(msg) == []
    assert msg.as_bytes() == email.message_from_bytes(PLAIN).as_bytes()


def test_internal_error_still_deletes_forged_copies() -> None:
    ctx, msg, _ = run(FORGED + PLAIN, login="alice", sink=BrokenSink())
    assert {a[0] for a in ctx.actions} == {"chg"} and ours(msg) == []


def test_a_large_body_passes_whole_and_its_record_is_cut(tmp_path: Path) -> None:
    big = b"From: alice@a.test\r\nSubject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 5000
    ctx, msg, sink = run(big, login="alice")
    assert not [a for a in ctx.actions if a[0] == "body"]          # not replaced
    assert len(sink.records[0].body_text.encode()) <= 200


def test_one_connection_many_messages_state_is_reset() -> None:
    install(Engine(CFG.domains, MailIds(KEY, 30), ListSink(), 200))
    ctx = RecordingCtx()
    ctx._connect()
    ctx._setsymval("{auth_authen}", "alice")
    ctx._msg = email.message_from_bytes(PLAIN)
    ctx._envfrom("<a@a.test>")
    ctx._envrcpt("<bob@b.test>")
    ctx._eom()
    ctx._setsymval("{auth_authen}", "")      # second message on the same connection
    ctx._msg = email.message_from_bytes(PLAIN)
    ctx.actions.clear()
    ctx._envfrom("<a@a.test>")
    ctx._eom()
    assert ctx.actions == []


def test_outbox_file_roundtrip(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o" / "outbox.sqlite3")
    woken = []
    box.on_added = lambda: woken.append(1)
    _, msg, _ = run(PLAIN, login="alice", sink=box)
    (p,) = box.due(now=1e12)
    assert p.mail_id == msg["X-Mail-ID"] and json.loads(p.record)["subject"] == "Grüße aus Köln"
    assert woken == [1]
    assert (tmp_path / "o" / "outbox.sqlite3").stat().st_mode & 0o777 == 0o600
    box.delete(p.id)
    assert box.count() == 0
    box.close()


@pytest.mark.parametrize("raw,text", [
    (b"=?utf-8?q?Gr=C3=BC=C3=9Fe?= =?iso-8859-1?q?_K=F6ln?=", "Grüße Köln"),
    ("Grüße raw UTF-8 (SMTPUTF8)".encode(), "Grüße raw UTF-8 (SMTPUTF8)"),
    (b"folded\r\n\tsubject  line", "folded subject line"),
    (b"=?no-such-charset?q?x?= stays", "=?no-such-charset?q?x?= stays"),
    (b"plain", "plain"),
])
def test_subject_decoding(raw: bytes, text: str) -> None:
    from mailtalk.mailrecord import header_text
    assert header_text([("subject", raw)], "Subject") == text


def test_body_text_with_unknown_charset_and_attachment_only() -> None:
    from mailtalk.mailrecord import body_text, parse_message
    msg = parse_message([("Content-Type", b"text/plain; charset=x-unknown")], b"hello\r\n")
    assert body_text(msg) == "hello"
    msg = parse_message([("Content-Type", b"multipart/mixed; boundary=B")],
                        b"--B\r\nContent-Type: text/plain\r\nContent-Disposition: attachment"
                        b"\r\n\r\nsecret file\r\n--B--\r\n")
    assert body_text(msg) == ""


def test_libmilter_is_claimed_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailtalk_milter import milter_socket
    monkeypatch.setattr(milter_socket, "_owner", None)
    milter_socket.claim("the sending milter")
    milter_socket.claim("the sending milter")            # the same part again: fine
    with pytest.raises(RuntimeError, match="already serves the sending milter"):
        milter_socket.claim("the receiving milter")


# --- notices quoted or forwarded in outgoing mail (a chat link is its recipient's alone)

def received_with_notice() -> bytes:
    """What bob received: alice's mail with the notice and bob's link (mailtalk.notice)."""
    from mailtalk.links import LinkTokens
    from mailtalk.notice import Notice, add_notice
    link = LinkTokens(KEY, "https://chat.a.example", 30).url(
        MailIds(KEY, 30).issue("alice@a.example"), "alice@a.example", "bob@b.test")
    assert link is not None
    got = add_notice(b"From: alice@a.example\r\nSubject: plans\r\n\r\nFriday?\r\n",
                     Notice("alice@a.example", "Alice", "online", link))
    assert got is not None
    return got


def reply_quoting(received: bytes, signed: bool = False) -> tuple[bytes, str]:
    text = received.partition(b"\r\n\r\n")[2].decode()
    link = next(w for w in text.split() if "/c/" in w)
    quoted = "".join("> " + line + "\r\n" for line in text.splitlines())
    body = f"Yes, Friday.\r\n\r\nAlice wrote:\r\n{quoted}".encode()
    head = (b"From: bob@b.test\r\nTo: alice@a.example\r\nSubject: Re: plans\r\n"
            b"MIME-Version: 1.0\r\n")
    if signed:
        head += b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; ' \
                b'micalg=sha-256; boundary="S"\r\n'
        body = (b"--S\r\nContent-Type: text/plain\r\n\r\n" + body + b"\r\n--S\r\n"
                b"Content-Type: application/pkcs7-signature\r\n\r\nAAAA\r\n--S--\r\n")
    else:
        head += b"Content-Type: text/plain; charset=utf-8\r\n"
    return head + b"\r\n" + body, link


def test_a_reply_quoting_the_notice_leaves_without_the_link() -> None:
    reply, link = reply_quoting(received_with_notice())
    assert link.encode() in reply and b"> mailtalk:" in reply
    ctx, _, sink = run(reply, login="bob@a.test")
    (body,) = [a[2] for a in ctx.actions if a[0] == "body"]
    assert link.encode() not in body and b"mailtalk:" not in body
    assert body.startswith(b"Yes, Friday.\r\n") and b"> Friday?" in body
    assert link not in sink.records[0].body_text       # nor in the record of the reply


def test_a_signed_reply_is_never_touched() -> None:
    reply, link = reply_quoting(received_with_notice(), signed=True)
    ctx, _, _ = run(reply, login="bob@a.test")
    assert not [a for a in ctx.actions if a[0] == "body"]


def test_mail_without_notices_keeps_its_body() -> None:
    ctx, _, _ = run(PLAIN.replace(b"bis morgen", b"see https://x.example/c/abc"), login="alice")
    assert not [a for a in ctx.actions if a[0] == "body"]


def test_the_presence_services_digest_keeps_its_link_a_forged_one_does_not() -> None:
    """A digest (presence_api/digest_mail.py) carries its recipient's own chat link; the
    milter knows it by X-Mailtalk-Digest, an HMAC under the site key. Copied onto
    another mail, or made up, it counts for nothing: that mail's links go."""
    from mailtalk.links import LinkTokens
    from presence_api.digest_mail import Digest, compose
    from presence_api.store import Mail, Message
    mail_id = MailIds(KEY, 30).issue("alice@a.test")
    link = LinkTokens(KEY, "http://127.0.0.1:8470", 30).url(mail_id, "alice@a.test", "bob@b.test")
    assert link is not None
    mail = Mail(mail_id, "alice@a.test", True, "<m1@a.test>", "Budget", recipients=("bob@b.test",))
    said = [Message(1, mail_id, "alice@a.test", "Friday?", 1.8e9)]
    digest = compose(Digest("bob@b.test", mail, said, link, False), "mailtalk@a.test", KEY, 1.8e9)
    raw = bytes(digest)
    assert link.encode() in raw
    ctx, _, sink = run(raw, site_key=KEY)
    assert not [a for a in ctx.actions if a[0] == "body"] and not sink.records
    ctx, _, _ = run(raw, site_key=bytes(32))             # another site's key
    (body,) = [a[2] for a in ctx.actions if a[0] == "body"]
    assert link.encode() not in body
    forged = raw.replace(b"Message-ID: <", b"Message-ID: <x", 1)
    ctx, _, _ = run(forged, site_key=KEY)
    assert [a for a in ctx.actions if a[0] == "body"]
