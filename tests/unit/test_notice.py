"""add_notice: the visible notice in the text part(s) a recipient reads.

Real MIME messages made with the `email` package, and hand-written raw ones. Every
test checks that the top-level header block comes back byte for byte."""

from __future__ import annotations

import base64
import email
import email.policy
import os
from email.message import EmailMessage

import pytest

from support.chat_links import chat_link
from mailtalk.notice import (MARKER, Notice, add_notice, default_templates, display_name,
                             split_header)

SMTP, LF = email.policy.SMTP, email.policy.default


LINK = chat_link()
NOTICE = Notice("alice@a.example", "Alice Example", "online", LINK)
TEXT_CRLF = default_templates().text(NOTICE, "\r\n")


def message(**headers: str) -> EmailMessage:
    m = EmailMessage()
    m["From"] = headers.pop("From", "Alice Example <alice@a.example>")
    m["To"] = "bob@b.example"
    m["Subject"] = "Lunch"
    m["Message-ID"] = "<1@a.example>"
    for k, v in headers.items():
        m[k] = v
    return m


def changed(raw: bytes, notice: Notice = NOTICE) -> bytes:
    out = add_notice(raw, notice)
    assert out is not None
    head = split_header(raw)[0]
    assert out.startswith(head) and head.endswith((b"\r\n\r\n", b"\n\n"))
    return out


def parts(raw: bytes) -> list[email.message.EmailMessage]:
    return [p for p in email.message_from_bytes(raw, policy=LF).walk()
            if not p.is_multipart()]


# --- single parts ---

def test_plain_us_ascii_7bit_gets_lines_before_the_text() -> None:
    raw = (b"From: alice@a.example\r\nTo: bob@b.example\r\nSubject: x\r\n"
           b"Content-Type: text/plain; charset=us-ascii\r\n\r\nHello Bob,\r\nbye\r\n")
    out = changed(raw)
    head, body = split_header(raw)
    assert out == head + TEXT_CRLF.encode() + body
    assert TEXT_CRLF == (f"mailtalk: Alice Example <alice@a.example> was online when this "
                         f"mail arrived.\r\nChat about this mail: {LINK}\r\n\r\n")


def test_no_content_type_is_plain_ascii() -> None:
    raw = b"From: alice@a.example\nSubject: x\n\nHello\n"
    out = changed(raw)
    assert out == b"From: alice@a.example\nSubject: x\n\n" + \
        default_templates().text(NOTICE, "\n").encode() + b"Hello\n"


def test_utf8_8bit_keeps_8bit_and_writes_the_name_in_utf8() -> None:
    m = message(From="=?utf-8?q?J=C3=B6rg_=C3=9Cnal?= <alice@a.example>")
    m.set_content("Grüße aus Köln\n", charset="utf-8", cte="8bit")
    raw = m.as_bytes(policy=SMTP)
    n = Notice("alice@a.example", display_name(raw), "away", LINK)
    assert n.sender_name == "Jörg Ünal"
    out = changed(raw, n)
    assert out.count("Jörg Ünal <alice@a.example> was away".encode()) == 1
    assert parts(out)[0].get_content() == default_templates().text(n, "\r\n") + \
        parts(raw)[0].get_content()


def test_iso_8859_1_quoted_printable_is_decoded_and_re_encoded() -> None:
    m = message()
    m.set_content("Café au lait, " * 20 + "\nsecond line =\n", charset="iso-8859-1",
                  cte="quoted-printable")
    raw = m.as_bytes(policy=SMTP)
    n = Notice("alice@a.example", "Jörg", "busy", LINK)
    out = changed(raw, n)
    new = parts(out)[0]
    assert new["Content-Transfer-Encoding"] == "quoted-printable"
    assert new.get_content_charset() == "iso-8859-1"
    assert new.get_content() == default_templates().text(n, "\r\n") + parts(raw)[0].get_content()
    body = split_header(out)[1]
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))
    assert b"\n" not in body.replace(b"\r\n", b"")      # CRLF soft breaks, no bare LF


def test_utf8_base64_is_re_encoded_in_76_character_crlf_lines() -> None:
    m = message()
    m.set_content("日本語のテキスト\n" * 30, charset="utf-8", cte="base64")
    raw = m.as_bytes(policy=SMTP)
    out = changed(raw)
    body = split_header(out)[1]
    lines = body.split(b"\r\n")
    assert all(len(line) == 76 for line in lines[:-2]) and lines[-1] == b""
    assert b"\n" not in body.replace(b"\r\n", b"")
    # the decoded text's own line ending (LF inside base64) is the notice's too
    assert parts(out)[0].get_content() == default_templates().text(NOTICE, "\n") + \
        parts(raw)[0].get_content()


def test_qp_re_encoding_that_would_create_a_delimiter_is_refused() -> None:
    qp = b"a" * 40 + b"=\r\n" + b"a" * 35 + b"--XYZ\r\n"
    raw = (b"Subject: x\r\nContent-Type: multipart/mixed; boundary=XYZ\r\n\r\n--XYZ\r\n"
           b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           + qp + b"--XYZ--\r\n")
    assert add_notice(raw, NOTICE) is None


def test_7bit_ascii_part_falls_back_to_the_address_when_the_name_is_not_ascii() -> None:
    m = message()
    m.set_content("plain ascii\n", charset="us-ascii", cte="7bit")
    raw = m.as_bytes(policy=SMTP)
    out = changed(raw, Notice("alice@a.example", "Jörg", "online", LINK))
    assert b"mailtalk: alice@a.example was online when this mail arrived." in out
    assert out.isascii()


def test_notice_that_cannot_be_written_in_the_charset_is_none() -> None:
    raw = b"Subject: x\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nhi\r\n"
    assert add_notice(raw, Notice("j\u00f6rg@a.example", "", "online", LINK)) is None


def test_iso_2022_jp_7bit_gets_a_7bit_notice() -> None:
    raw = b"Subject: x\r\nContent-Type: text/plain; charset=iso-2022-jp\r\n\r\nhi\r\n"
    n = Notice("alice@a.example", "山田 太郎", "online", LINK)
    out = changed(raw, n)
    assert out.isascii() and parts(out)[0].get_content().startswith("mailtalk: 山田 太郎 <")


@pytest.mark.parametrize("charset", ["x-unknown", "utf-16", "utf-7"])
def test_unknown_or_not_ascii_compatible_charset_is_none(charset: str) -> None:
    raw = f"Subject: x\r\nContent-Type: text/plain; charset={charset}\r\n\r\nhi\r\n".encode()
    assert add_notice(raw, NOTICE) is None


@pytest.mark.parametrize("html, at", [
    (b"<html><head><title>t</title></head><body>Hi</body></html>", b"<body>"),
    (b"<!DOCTYPE html>\r\n<HTML><HEAD></HEAD><BODY class=\"m\" style='a>b'>Hi</BODY></HTML>",
     b"<BODY class=\"m\" style='a>b'>"),
    (b"<html><head><!-- <body> --><style>p{}</style></head>\r\n<body\r\n dir=ltr>Hi</body>",
     b"<body\r\n dir=ltr>"),
    (b"<!DOCTYPE html><html><head><meta charset=utf-8></head><p>Hi</p></html>", b"</head>"),
    (b"<p>Just a fragment</p>", b""),
])
def test_single_part_html_block_right_after_the_body_tag(html: bytes, at: bytes) -> None:
    raw = b"Subject: x\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html + b"\r\n"
    out = changed(raw)
    block = default_templates().html(NOTICE, "\r\n").encode()
    pos = html.index(at) + len(at)
    assert split_header(out)[1] == html[:pos] + block + html[pos:] + b"\r\n"
    assert f'<a href="{LINK}">Chat about this mail</a>'.encode() in block
    assert b'data-mailtalk="notice"' in block and b"<span" in block and MARKER.encode() in block
    for bad in (b"<img", b"<script", b"<style", b"background", b"color:#", b"http://", b"src="):
        assert bad not in block.replace(LINK.encode(), b"")


@pytest.mark.parametrize("html", [
    b"<html><head><title>x<body></title>",             # only in a title: no real body tag
    b"<html><head><title>x</title><p>no end of head",
    b"<!-- <body> unclosed comment",
])
def test_html_without_a_safe_place_is_none(html: bytes) -> None:
    raw = b"Subject: x\r\nContent-Type: text/html\r\n\r\n" + html
    assert add_notice(raw, NOTICE) is None


def test_html_escapes_name_and_link() -> None:
    link = chat_link() + "?a=1&b=2"
    n = Notice("alice@a.example", '<script>alert(1)</script> "Q"', "online", link)
    m = message()
    m.set_content("text\n")
    m.add_alternative("<html><body><p>x</p></body></html>\n", subtype="html")
    out = changed(m.as_bytes(policy=SMTP), n)
    html = parts(out)[1].get_content()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &#34;Q&#34;" in html
    assert f'href="{link.replace("&", "&amp;")}"' in html
    assert f"Chat about this mail: {link}" in parts(out)[0].get_content()   # plain: as is


def test_html_non_latin_name_in_latin1_part_becomes_character_references() -> None:
    raw = b"Subject: x\r\nContent-Type: text/html; charset=iso-8859-1\r\n\r\n<p>Hi\xe9</p>\r\n"
    out = changed(raw, Notice("alice@a.example", "山田", "online", LINK))
    assert b"&#23665;&#30000; &lt;alice@a.example&gt;" in out
    assert out.endswith(b"<p>Hi\xe9</p>\r\n")


def test_byte_order_mark_stays_first() -> None:
    raw = b"Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\xef\xbb\xbfHi\r\n"
    assert split_header(changed(raw))[1] == b"\xef\xbb\xbf" + TEXT_CRLF.encode() + b"Hi\r\n"


# --- multipart ---

def test_alternative_both_parts_and_exactly_the_link() -> None:
    m = message()
    m.set_content("Hello Bob\n")
    m.add_alternative("<html><body style=\"x\"><p>Hello Bob</p></body></html>\n", subtype="html")
    raw = m.as_bytes(policy=SMTP)
    out = changed(raw)
    old, new = parts(raw), parts(out)
    assert new[0].get_content() == TEXT_CRLF + old[0].get_content()
    html = new[1].get_content()
    assert html.count(f'<a href="{LINK}">') == 1 and html.count("href=") == 1
    assert html.replace(default_templates().html(NOTICE, "\r\n"), "") == old[1].get_content()


def test_lf_only_message_keeps_lf() -> None:
    m = message()
    m.set_content("Hello\nBob\n")
    m.add_alternative("<html><body>Hi</body></html>\n", subtype="html")
    raw = m.as_bytes(policy=LF)
    assert b"\r" not in raw
    out = changed(raw)
    assert b"\r" not in out
    assert parts(out)[0].get_content() == default_templates().text(NOTICE, "\n") + "Hello\nBob\n"


def test_mixed_related_inside_alternative_changes_plain_and_html_only() -> None:
    m = message()
    m.set_content("Look at this\n")
    m.add_alternative('<html><body><img src="cid:pic"></body></html>\n', subtype="html")
    m.get_payload()[1].add_related(b"\x89PNG fake", "image", "png", cid="<pic>")
    m.add_attachment(b"%PDF-1.4 fake", "application", "pdf", filename="a.pdf")
    raw = m.as_bytes(policy=SMTP)
    out = changed(raw)
    old, new = parts(raw), parts(out)
    assert [p.get_content_type() for p in new] == [p.get_content_type() for p in old] == \
        ["text/plain", "text/html", "image/png", "application/pdf"]
    assert new[0].get_content().startswith(MARKER) and MARKER in new[1].get_content()
    for i in (2, 3):
        assert new[i].get_content() == old[i].get_content()
    assert out.count(LINK.encode()) == 2


def test_first_readable_part_in_document_order_attachments_never() -> None:
    raw = (b"Subject: x\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\npreamble\r\n"
           b"--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt"
           b"\r\n\r\nattached text\r\n--b\r\nContent-Type: image/png\r\n\r\nPNG\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nthe body\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nsecond text\r\n--b--\r\nepilogue\r\n")
    out = changed(raw)
    assert out == raw.replace(b"\r\n\r\nthe body", b"\r\n\r\n" + TEXT_CRLF.encode() + b"the body")


def test_attached_message_is_not_descended_into() -> None:
    inner = b"Subject: inner\r\nContent-Type: text/plain\r\n\r\ninner text\r\n"
    raw = (b"Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: message/rfc822\r\n\r\n" + inner + b"--b--\r\n")
    assert add_notice(raw, NOTICE) is None


def test_no_text_part_is_none() -> None:
    m = message()
    m.add_attachment(b"\x00\x01binary", "application", "octet-stream", filename="x.bin")
    assert add_notice(m.as_bytes(policy=SMTP), NOTICE) is None


@pytest.fixture(scope="module")
def big_mail() -> bytes:
    data = base64.encodebytes(os.urandom(15 << 20)).replace(b"\n", b"\r\n")   # ~20 MB
    return (b"From: alice@a.example\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"BIG\"\r\n\r\n"
            b"--BIG\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n"
            b"--BIG\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: "
            b"base64\r\nContent-Disposition: attachment; filename=big.bin\r\n\r\n"
            + data + b"--BIG--\r\n")


def test_20_mb_attachment_is_byte_identical(big_mail: bytes) -> None:
    out = changed(big_mail)
    att = big_mail.index(b"--BIG\r\nContent-Type: application")
    notice = TEXT_CRLF.encode()
    assert out[:att + len(notice)] == big_mail[:att].replace(b"\r\n\r\nSee",
                                                             b"\r\n\r\n" + notice + b"See")
    assert out[att + len(notice):] == big_mail[att:]


def test_a_large_text_part_is_refused() -> None:
    raw = b"Subject: x\r\n\r\n" + b"x" * 80 + b"\r\n" * (5 << 20)
    assert add_notice(raw, NOTICE) is None
