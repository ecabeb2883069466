"""The record of a sent mail, made from what the milter saw: no sockets, no milter.

The milter collects header fields and the body; the first `raw_body_cap` bytes of it go in;
`make_record` turns them into the JSON the presence service stores
(`POST /api/v1/mails`, docs/architecture.md): Message-ID, subject (RFC 2047
decoded), date, envelope recipients and the body text - the text/plain part, else
the text of the HTML part - cut at `[milter] body_text_limit` bytes of UTF-8.
"""

from __future__ import annotations

import email.header
import email.utils
import html.parser
import re
from dataclasses import asdict, dataclass, field
from datetime import timezone
from email.message import Message
from email.parser import BytesParser

from mailtalk.accounts import normalize_account

# How many raw body bytes are kept per body_text_limit byte of text: base64 makes
# 3 bytes into 4, quoted-printable up to 3x, HTML markup often more. Past the cap
# the body is not parsed (a 50 MB attachment is not decoded); the text is taken
# from what is within it, which is cut anyway.
RAW_PER_TEXT_BYTE = 4
RAW_BODY_MIN = 64 * 1024
# Header fields kept for the record (all of them: MIME parsing needs Content-*),
# at most this many bytes; a larger header block is rare and kept only in part.
HEADERS_MAX_BYTES = 256 * 1024
# Within what the presence service takes (presence_api/api.py: subject 2000,
# header fields 1000, body text 512 Ki characters, queue ID 64, request 1 MiB).
SUBJECT_MAX_CHARS = 998
MESSAGE_ID_MAX_CHARS = 998
QUEUE_ID_MAX_CHARS = 64
BODY_TEXT_MAX_BYTES = 256 * 1024     # whatever body_text_limit says


def raw_body_cap(body_text_limit: int) -> int:
    limit = min(body_text_limit, BODY_TEXT_MAX_BYTES)
    return max(RAW_PER_TEXT_BYTE * limit, RAW_BODY_MIN) if limit else 0


@dataclass(frozen=True)
class MailRecord:
    mail_id: str
    account: str
    message_id: str
    subject: str
    date: str                  # RFC 3339 UTC; "" when the mail has no usable Date
    recipients: list[str]
    body_text: str
    queue_id: str
    # Display names from From, To and Cc (lower-cased address -> name): what every
    # recipient of the mail saw in its header; never Bcc, which no header shows.
    names: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class _HtmlText(html.parser.HTMLParser):
    """The visible text of an HTML part: no script/style, breaks at block ends."""

    _SKIP = {"script", "style", "head", "title"}
    _BREAK = {"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6",
              "blockquote", "pre", "table", "ul", "ol"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BREAK:
            self._out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BREAK:
            self._out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._out.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self._out).splitlines())
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(markup: str) -> str:
    p = _HtmlText()
    p.feed(markup)
    p.close()
    return p.text()


def cut_utf8(text: str, limit: int) -> str:
    """At most `limit` bytes of UTF-8, never half a character."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "us-ascii"
    try:
        return payload.decode(charset, "replace")
    except LookupError:                         # unknown charset name
        return payload.decode("utf-8", "replace")


def body_text(msg: Message) -> str:
    """The text/plain part that is not an attachment, else the text of the HTML one."""
    plain = html = None
    for part in msg.walk():
        if part.is_multipart():
            continue
        if part.get_content_disposition() == "attachment":
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain" and plain is None:
            plain = part
        elif ctype == "text/html" and html is None:
            html = part
    if plain is not None:
        return _part_text(plain).replace("\r\n", "\n").strip()
    if html is not None:
        return html_to_text(_part_text(html))
    return ""


def header_text(headers: list[tuple[str, bytes]], name: str) -> str:
    """The first `name` field, unfolded, RFC 2047 encoded-words decoded; raw 8-bit
    values (SMTPUTF8) taken as UTF-8. A field that cannot be decoded stays as it is."""
    want = name.lower()
    raw = next((v for n, v in headers if n.lower() == want), b"")
    text = " ".join(raw.decode("utf-8", "replace").split())
    if "=?" in text:
        try:
            text = str(email.header.make_header(email.header.decode_header(text)))
        except (ValueError, LookupError, UnicodeError):   # bad charset or encoding
            pass
    return text


def rfc3339_date(value: str) -> str | None:
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:                        # "-0000": UTC per RFC 5322
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_message(headers: list[tuple[str, bytes]], body: bytes) -> Message:
    """A Message from the header fields as the milter got them and the kept body.

    compat32, not policy.default: the record needs only the MIME structure, and
    policy.default's header objects made the record 3x slower (measured)."""
    lines = [name.encode("ascii", "replace") + b": " + value.replace(b"\r", b"")
             .replace(b"\n", b"\r\n") for name, value in headers]
    raw = b"\r\n".join(lines) + b"\r\n\r\n" + body
    return BytesParser().parsebytes(raw)


def bare_address(addr: str) -> str:
    """`<bob@b.example>` (as the milter gets RCPT TO) -> `bob@b.example`."""
    addr = addr.strip()
    if addr.startswith("<") and ">" in addr:
        addr = addr[1:addr.index(">")]
    return addr.strip()


def recipients_of(rcpts: list[str]) -> list[str]:
    """Envelope recipients as the presence service takes them (local part kept,
    domain lower-cased, no duplicates). An address it would refuse (a quoted local
    part, say) is left out rather than have the whole record refused."""
    out: list[str] = []
    for r in rcpts:
        addr = normalize_account(bare_address(r))
        if addr is not None and addr not in out:
            out.append(addr)
    return out


def make_record(*, mail_id: str, account: str, queue_id: str,
                recipients: list[str], headers: list[tuple[str, bytes]],
                body: bytes, body_text_limit: int) -> MailRecord:
    msg = parse_message(headers, body)
    limit = min(body_text_limit, BODY_TEXT_MAX_BYTES)
    text = cut_utf8(body_text(msg), limit) if limit else ""
    return MailRecord(
        mail_id=mail_id,
        account=account,
        message_id=header_text(headers, "Message-ID")[:MESSAGE_ID_MAX_CHARS],
        subject=header_text(headers, "Subject")[:SUBJECT_MAX_CHARS],
        date=rfc3339_date(header_text(headers, "Date")) or "",
        recipients=recipients_of(recipients),
        body_text=text,
        queue_id=queue_id[:QUEUE_ID_MAX_CHARS],
        names=display_names(headers),
    )


NAMES_MAX = 200               # names kept per mail
NAME_MAX_CHARS = 200


def display_names(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    """address -> display name from the From, To and Cc fields (RFC 2047 decoded);
    an address without a name, or a name with control characters, is left out."""
    fields = [header_text(headers, n) for n in ("From", "To", "Cc")]
    names: dict[str, str] = {}
    for name, addr in email.utils.getaddresses([f for f in fields if f]):
        name, addr = " ".join(name.split()), normalize_account(addr.strip())
        if (addr and name and len(name) <= NAME_MAX_CHARS and name.isprintable()
                and name.lower() != addr.lower() and addr.lower() not in names):
            names[addr.lower()] = name
        if len(names) >= NAMES_MAX:
            break
    return names
