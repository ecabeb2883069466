"""strip_notices: the sending milter removes our notices (and any chat link) from outgoing
mail, so that a recipient's link does not travel on in a reply or a forward."""

from __future__ import annotations

import base64
import email
import email.policy
import os
from email.message import EmailMessage

import pytest

from support.chat_links import chat_link
from mailtalk.notice import Notice, add_notice, default_templates, split_header
from mailtalk.notice_strip import REMOVED, is_chat_token, strip_notices

SMTP, LF = email.policy.SMTP, email.policy.default


LINK = chat_link()
NOTICE = Notice("alice@a.example", "Alice Example", "online", LINK)
ORIGINAL = "Hi Bob,\n\nlunch at noon?\n\nAlice\n"
ORIGINAL_HTML = "<html><body><p>Hi Bob,</p><p>lunch at noon?</p></body></html>\n"


def received() -> tuple[str, str]:
    """Bob's copy of Alice's mail, as his client shows it: (plain, html) with notices."""
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "Alice Example <alice@a.example>", "bob@b.example", "x"
    m.set_content(ORIGINAL)
    m.add_alternative(ORIGINAL_HTML, subtype="html")
    out = add_notice(m.as_bytes(policy=LF), NOTICE)
    assert out is not None
    plain, html = (p.get_content() for p in email.message_from_bytes(out, policy=LF).walk()
                   if not p.is_multipart())
    return plain, html


def outgoing(text: str | None = None, html: str | None = None, cte: str | None = None,
             policy: email.policy.Policy = SMTP) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "Bob <bob@b.example>", "dave@d.example", "Re: x"
    if text is not None:
        m.set_content(text, cte=cte)
    if html is not None:
        if text is None:
            m.set_content(html, subtype="html", cte=cte)
        else:
            m.add_alternative(html, subtype="html", cte=cte)
    return m.as_bytes(policy=policy)


def stripped(raw: bytes) -> list[str]:
    out = strip_notices(raw)
    assert out is not None
    head = split_header(raw)[0]
    assert out.startswith(head)
    assert LINK.encode() not in out and b"mailtalk:" not in out
    return [p.get_content() for p in email.message_from_bytes(out, policy=LF).walk()
            if not p.is_multipart()]


def quote(text: str, prefix: str) -> str:
    return "".join(prefix + line if line else prefix.rstrip() for line in
                   text.splitlines(keepends=True))


@pytest.mark.parametrize("prefix", ["> ", ">> ", "> > ", ">"])
def test_quoted_reply_loses_the_notice_and_keeps_the_rest(prefix: str) -> None:
    plain, _ = received()
    reply = "Sure, see you.\n\nOn Monday Alice wrote:\n" + quote(plain, prefix) + "\n-- \nBob\n"
    want = "Sure, see you.\n\nOn Monday Alice wrote:\n" + quote(ORIGINAL, prefix) + "\n-- \nBob\n"
    assert stripped(outgoing(reply)) == [want.replace("\n", "\r\n")]


def test_inline_forward_unquoted() -> None:
    plain, _ = received()
    fwd = "FYI\n\n-------- Forwarded Message --------\nSubject: x\n\n" + plain
    want = "FYI\n\n-------- Forwarded Message --------\nSubject: x\n\n" + ORIGINAL
    assert stripped(outgoing(fwd, policy=LF)) == [want]


def test_notice_re_wrapped_by_the_client() -> None:
    wrapped = (f"> mailtalk: Alice Example <alice@a.example> was online when\n"
               f"> this mail arrived.\n> Chat about this mail:\n> {LINK}\n>\n> {ORIGINAL}")
    assert stripped(outgoing("ok\n\n" + wrapped, policy=LF)) == ["ok\n\n> " + ORIGINAL]


def test_quoted_notice_without_its_blank_line_ends_at_the_link() -> None:
    text = (f"> mailtalk: Alice Example <alice@a.example> was online.\n"
            f"> Chat about this mail: {LINK}\n> Hi Bob,\n")
    assert stripped(outgoing(text, policy=LF)) == ["> Hi Bob,\n"]


def test_html_reply_with_the_block_in_a_blockquote() -> None:
    plain, html = received()
    body = html.split("<body>", 1)[1].rsplit("</body>", 1)[0]
    reply = ('<html><body><p>Sure.</p><div class="moz-cite-prefix">Alice wrote:</div>'
             f'<blockquote type="cite">{body}</blockquote></body></html>')
    want = reply.replace(default_templates().html(NOTICE, "\n"), "") + "\n"
    assert "Hi Bob" in want and "blockquote" in want
    assert stripped(outgoing("Sure.\n\n" + quote(plain, "> "), reply, policy=LF)) == \
        ["Sure.\n\n" + quote(ORIGINAL, "> "), want]


def test_html_block_whose_attribute_a_client_dropped() -> None:
    _, html = received()
    dropped = html.replace(' data-mailtalk="notice"', "")
    body = dropped.split("<body>", 1)[1].rsplit("</body>", 1)[0]
    reply = f'<div dir="ltr">Sure.<blockquote class="gmail_quote"><div dir="ltr">{body}</div>' \
            "</blockquote></div>"
    (out,) = stripped(outgoing(html=reply, policy=LF))
    assert out == reply.replace(
        default_templates().html(NOTICE, "\n").replace(' data-mailtalk="notice"', ""), "") + "\n"
    assert "Hi Bob" in out and out.count("<div") == out.count("</div>") == 2


def test_html_rewritten_by_a_client_loses_anchor_and_bare_urls() -> None:
    # Outlook-like: our div became paragraphs; only the link fallback applies
    html = (f'<p class=MsoNormal><b>mailtalk:</b> Alice was online</p>'
            f'<p class=MsoNormal><a href="{LINK}"><span>Chat about this mail</span></a>'
            f' or open {LINK}</p><p><a href="https://example.org/c/abc">other</a></p>\n')
    out = strip_notices(outgoing(html=html, policy=LF))
    assert out is not None and LINK.encode() not in out
    (text,) = [p.get_content() for p in email.message_from_bytes(out, policy=LF).walk()]
    assert text == (f'<p class=MsoNormal><b>mailtalk:</b> Alice was online</p>'
                    f'<p class=MsoNormal>{REMOVED.decode()} or open {REMOVED.decode()}</p>'
                    f'<p><a href="https://example.org/c/abc">other</a></p>\n')


def test_plain_bare_link_anywhere_is_replaced() -> None:
    text = f"see {LINK} and <{chat_link(base='http://127.0.0.2:8080/mt')}>\n"
    assert stripped(outgoing(text, policy=LF)) == [f"see {REMOVED.decode()} and "
                                                   f"<{REMOVED.decode()}>\n"]


def test_qp_and_base64_parts_are_re_encoded() -> None:
    plain, html = received()
    reply = "Grüße\n\n" + quote(plain, "> ")
    for cte in ("quoted-printable", "base64"):
        raw = outgoing(reply, html, cte=cte)
        out = stripped(raw)
        assert out[0] == ("Grüße\n\n" + quote(ORIGINAL, "> ")).replace(
            "\n", "\r\n" if cte == "quoted-printable" else "\n")
        assert "Hi Bob," in out[1] and "Chat about" not in out[1]


def test_forward_as_attachment_is_stripped_inside() -> None:
    plain, _ = received()
    inner = EmailMessage()
    inner["From"], inner["Subject"] = "alice@a.example", "x"
    inner.set_content(plain)
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "bob@b.example", "dave@d.example", "Fwd: x"
    m.set_content("see attached\n")
    m.add_attachment(inner)
    raw = m.as_bytes(policy=SMTP)
    out = stripped(raw)
    assert out[1] == ORIGINAL.replace("\n", "\r\n")


def test_text_attachment_with_a_link_is_cleaned_too() -> None:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "bob@b.example", "dave@d.example", "notes"
    m.set_content("see attached\n")
    m.add_attachment(f"saved mail\n{LINK}\n", filename="saved.txt")
    m.add_attachment(b"\x00" + LINK.encode(), "application", "octet-stream", filename="x.bin")
    raw = m.as_bytes(policy=SMTP)
    out = strip_notices(raw)
    assert out is not None and out.startswith(split_header(raw)[0])
    got = [p.get_content() for p in email.message_from_bytes(out, policy=LF).walk()
           if not p.is_multipart()]
    assert got[1] == f"saved mail\r\n{REMOVED.decode()}\r\n"
    assert got[2] == b"\x00" + LINK.encode()        # not text: never touched


def test_ordinary_urls_with_c_stay_and_nothing_changed_is_none() -> None:
    text = ("mailtalk: a project name at the start of a line\n\n"
            "https://example.org/c/abc and https://example.org/c/" + "A" * 80 + "\n")
    assert strip_notices(outgoing(text)) is None
    assert strip_notices(outgoing("Hello\n", "<p>Hello</p>")) is None


def test_signed_or_pgp_reply_is_never_touched() -> None:
    plain, _ = received()
    signed = (b"Subject: s\r\nContent-Type: multipart/signed; protocol=\"application/pgp-"
              b"signature\"; boundary=S\r\n\r\n--S\r\nContent-Type: text/plain\r\n\r\n"
              + quote(plain, "> ").encode() + b"\r\n--S\r\nContent-Type: application/pgp-"
              b"signature\r\n\r\n-----BEGIN PGP SIGNATURE-----\r\nx\r\n--S--\r\n")
    assert strip_notices(signed) is None
    inline = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n" + quote(plain, "> ")
    assert strip_notices(outgoing(inline)) is None


def test_chat_token_shape() -> None:
    token = LINK.rsplit("/", 1)[1].encode()
    assert is_chat_token(token)
    assert not is_chat_token(token[:-1])
    assert not is_chat_token(b"A" * len(token))
    raw = bytearray(base64.urlsafe_b64decode(token + b"=" * (-len(token) % 4)))
    raw[0] = 1
    assert not is_chat_token(base64.urlsafe_b64encode(bytes(raw)).rstrip(b"="))


def test_real_links_have_the_shape() -> None:
    from mailtalk.links import LinkTokens
    from mailtalk.mailid import b64url
    maker = LinkTokens(b"k" * 32, "https://chat.a.example", 30)
    for sender, rcpt in [("alice@a.example", "bob@b.example"), ("ä@a.example", "ü@b.example")]:
        url = maker.url(b64url(os.urandom(33)), sender, rcpt)
        assert is_chat_token(url.rsplit("/", 1)[1].encode())
        assert strip_notices(outgoing(f"{url}\n")) is not None
