"""Mail with mailtalk's visible notice, as a recipient's client sees and sends it.

Reading a delivered copy: its decoded text parts (`text_parts`), the chat links in a
text (`chat_links`, `token`), the notice paragraph of a text/plain part and the notice
block of a text/html part (`plain_notice`, `html_notice`). Writing mail as a client
does: a multipart/alternative original (`alternative`), a reply that quotes the text
with `> ` (`quoted_reply_text`), an inline forward whose HTML quotes the original inside
`<blockquote type="cite">` (`forward_text`, `forward_html`). Messages are made with
CRLF line ends, as they are submitted; delivered copies (Maildir) have LF.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage

MARKER = "mailtalk:"
# A chat link as the notice writes it: base URL, `/c/`, a base64url token.
CHAT_LINK = re.compile(r"https?://[^\s<>\"']+?/c/[A-Za-z0-9_-]{20,}")
HTML_BLOCK = re.compile(r'<div data-mailtalk="notice".*?</div>', re.S)
DATE = "Sun, 29 Nov 2026 07:00:00 +0000"


def text_parts(raw: bytes) -> dict[str, list[str]]:
    """The decoded text of every text/plain and text/html part, in document order."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    out: dict[str, list[str]] = {"text/plain": [], "text/html": []}
    for part in msg.walk():
        if part.get_content_type() in out:
            out[part.get_content_type()].append(part.get_content())
    return out


def the_part(raw: bytes, ctype: str) -> str:
    """The decoded text of the message's one part of type `ctype`."""
    found = text_parts(raw)[ctype]
    assert len(found) == 1, f"{len(found)} {ctype} parts"
    return found[0]


def chat_links(text: str) -> list[str]:
    return CHAT_LINK.findall(text)


def token(link: str) -> str:
    return link.rpartition("/c/")[2]


def plain_notice(text: str) -> tuple[str, str]:
    """(the notice paragraph with its blank line, the text after it) of a text/plain
    part that opens with a notice; ("", text) if it does not."""
    if not text.startswith(MARKER):
        return "", text
    head, sep, rest = text.partition("\n\n")
    return head + sep, rest


def html_notice(html: str) -> str:
    """The notice block of a text/html part ("" if there is none)."""
    m = HTML_BLOCK.search(html)
    return m.group(0) if m else ""


def body_inner(html: str) -> str:
    m = re.search(r"<body[^>]*>(.*)</body>", html, re.S | re.I)
    assert m, "no <body> in the HTML part"
    return m.group(1)


def alternative(*, from_: str, to: list[str], subject: str, message_id: str, text: str,
                html: str, headers: dict[str, str] | None = None) -> bytes:
    """A multipart/alternative mail (text/plain 7bit, text/html quoted-printable, as
    Thunderbird sends one), CRLF line ends."""
    m = _head(from_, to, subject, message_id, headers)
    m.set_content(text)
    m.add_alternative(html, subtype="html", cte="quoted-printable")
    return m.as_bytes(policy=email.policy.SMTP)


def plain(*, from_: str, to: list[str], subject: str, message_id: str, text: str,
          headers: dict[str, str] | None = None) -> bytes:
    m = _head(from_, to, subject, message_id, headers)
    m.set_content(text)
    return m.as_bytes(policy=email.policy.SMTP)


def _head(from_: str, to: list[str], subject: str, message_id: str,
          headers: dict[str, str] | None) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = from_, ", ".join(to), subject
    m["Date"], m["Message-ID"] = DATE, message_id
    for name, value in (headers or {}).items():
        m[name] = value
    return m


def quote(text: str) -> str:
    """`text` quoted as a mail client quotes it in a reply (`> `, `>` on empty lines)."""
    return "".join(f"> {line}\n" if line else ">\n" for line in text.splitlines())


def quoted_reply_text(own: str, attribution: str, original: str) -> str:
    return f"{own}\n\n{attribution}\n{quote(original)}\n-- \nBob\n"


def forward_text(own: str, forwarded_head: str, original: str) -> str:
    return (f"{own}\n\n-------- Forwarded Message --------\n{forwarded_head}\n\n"
            f"{original}")


def forward_html(own: str, forwarded_head: str, original_inner: str) -> str:
    return ('<html><head><meta http-equiv="content-type" content="text/html; '
            'charset=UTF-8"></head><body>\n'
            f"<p>{own}</p>\n<div class=\"moz-forward-container\">"
            f"-------- Forwarded Message --------<br>{forwarded_head}<br>\n"
            f'<blockquote type="cite">{original_inner}</blockquote>\n'
            "</div>\n</body></html>\n")
