"""Removing our notices from outgoing mail, so that a recipient's chat link (a bearer
capability of that one recipient) does not travel on in a reply or a forward.

The sending milter calls `strip_notices(raw)` on every outgoing message. It returns the
whole message with the notices removed from its text parts, or None when nothing changed
or the mail must not be touched. The top-level header block is returned byte for byte
(`split_header(raw)[0]` is a prefix of the result: the milter replaces only the body
with `result[len(header_block):]`), and so is every part that held no notice.

What is removed, in every text/plain and text/html part, attachments and attached mails
(message/rfc822) included:

* text/plain: the notice paragraph as `mailtalk.notice` writes it, unquoted (an inline
  forward) or quoted with `>` at any depth (`> `, `>>`, `> > `), also re-wrapped by the
  client: from a line whose text starts with the marker `mailtalk:` to the first blank
  line at the same quote depth (at most BLOCK_LINES lines), when that paragraph holds a
  URL with `/c/`;
* text/html: the element carrying `data-mailtalk="notice"` (also inside a
  `<blockquote type="cite">` or a forwarded `<div>`); where a client dropped the
  attribute, the innermost `<div>` or `<p>` whose text starts with `mailtalk:` and holds a
  link (at most 16 KiB); then every `<a>...</a>` whose href is a chat link becomes the
  text "[chat link removed]";
* everywhere, as the last fallback: any URL shaped like a chat link,
  `http(s)://host[:port][/path]/c/<token>`, becomes "[chat link removed]". The token is
  checked against the layout of mailtalk/links.py (version 2, 33 bytes of Mail-ID,
  sender length, sender and recipient in UTF-8 with an `@`, 16 bytes of MAC), so an
  ordinary URL that happens to contain `/c/` stays.

What cannot be caught: a screenshot or a photo of the link; a link retyped or cut
across lines by hand; a client that rewrites both the HTML and the text so that neither
the marker nor the URL survives in one piece; a link in a header field (a Subject) or in
a part that is not text/plain or text/html (a PDF, a mail attached as base64 or
application/octet-stream, an attached mail that does not parse); a text part in a
charset that is not ASCII-compatible (UTF-16) or over 4 MiB; and a signed or encrypted
mail (S/MIME, PGP/MIME, inline PGP), which is never touched: changing it would break its
signature, and encrypted text cannot be read.
"""

from __future__ import annotations

import base64
import binascii
import re
from functools import lru_cache

from mailtalk import notice_mime as mime
from mailtalk.notice_mime import Part, TooBig, Unsafe, split_header

__all__ = ["strip_notices", "split_header", "is_chat_token", "REMOVED"]

REMOVED = b"[chat link removed]"
MARKER = b"mailtalk:"
BLOCK_LINES = 12            # a quoted notice, re-wrapped by a client, is a few lines
HTML_BLOCK_MAX = 16 << 10

# mailtalk/links.py: 2 | mail_id (33) | len(sender) | sender | recipient | MAC (16)
_VERSION, _MAIL_ID, _MAC, _ADDRESS_MAX = 2, 33, 16, 254
_MIN_BYTES = 1 + _MAIL_ID + 1 + 1 + 1 + _MAC
_MAX_BYTES = 1 + _MAIL_ID + 1 + 2 * _ADDRESS_MAX + _MAC
_MIN_CHARS, _MAX_CHARS = -(-_MIN_BYTES * 4 // 3), -(-_MAX_BYTES * 4 // 3)

_URL = re.compile(rb"https?://[^\s<>\"'/]+(?:/[^\s<>\"']*)?/c/([A-Za-z0-9_-]{%d,%d})"
                  rb"(?![A-Za-z0-9_-])" % (_MIN_CHARS, _MAX_CHARS))
_LINK_HINT = re.compile(rb"https?://\S*/c/")
_QUOTE = re.compile(rb"[ \t]*(?:>[ \t]*)*")
_TAG_REST = rb"(?:[^>\"']|\"[^\"]*\"|'[^']*')*>"
_OPEN_TAG = re.compile(rb"<([a-zA-Z][a-zA-Z0-9]*)(?=[\s/>])" + _TAG_REST)
_ATTR_MARK = re.compile(rb"data-mailtalk\s*=\s*[\"']?notice\b", re.I)
# An anchor and its text, not across another anchor, bounded (an unclosed <a> must not
# take the rest of the mail with it).
_ANCHOR = re.compile(rb"(<a(?=[\s>])" + _TAG_REST + rb")(?:(?!<a[\s>]).){0,4096}?</a\s*>",
                     re.I | re.S)


def is_chat_token(token: bytes) -> bool:
    """True if `token` has the structure of a mailtalk link token (the MAC unchecked)."""
    if not _MIN_CHARS <= len(token) <= _MAX_CHARS or len(token) % 4 == 1:
        return False
    try:
        raw = base64.urlsafe_b64decode(token + b"=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return False
    if not _MIN_BYTES <= len(raw) <= _MAX_BYTES or raw[0] != _VERSION:
        return False
    n, rest = raw[1 + _MAIL_ID], raw[2 + _MAIL_ID:-_MAC]
    if not 0 < n < len(rest) or n > _ADDRESS_MAX or len(rest) - n > _ADDRESS_MAX:
        return False
    try:
        sender, recipient = rest[:n].decode("utf-8"), rest[n:].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return "@" in sender and "@" in recipient


def _has_chat_link(data: bytes) -> bool:
    return any(is_chat_token(m.group(1)) for m in _URL.finditer(data))


def _strip_urls(data: bytes) -> bytes:
    return _URL.sub(lambda m: REMOVED if is_chat_token(m.group(1)) else m.group(0), data)


# --- text/plain ---

def _quote(line: bytes) -> tuple[int, bytes]:
    """(quote depth, the text after the quote marks, without its line break)."""
    prefix = _QUOTE.match(line).group()
    return prefix.count(b">"), line[len(prefix):].rstrip(b"\r\n")


def _plain_block_end(lines: list[bytes], i: int) -> int:
    """If a notice starts at line i: the index after it (its blank line included)."""
    depth, text = _quote(lines[i])
    if not text.startswith(MARKER):
        return 0
    last_link = 0
    for j in range(i, min(len(lines), i + BLOCK_LINES)):
        d, text = _quote(lines[j])
        if d != depth:
            break
        if not text.strip():
            return j + 1 if last_link else 0
        if _LINK_HINT.search(text):
            last_link = j + 1
    return last_link        # no blank line (a client dropped it): through the link line


def strip_plain(data: bytes) -> bytes:
    if MARKER in data:
        lines, out, i = data.splitlines(keepends=True), [], 0
        while i < len(lines):
            end = _plain_block_end(lines, i)
            if end:
                i = end
                continue
            out.append(lines[i])
            i += 1
        data = b"".join(out)
    return _strip_urls(data)


# --- text/html ---

@lru_cache(maxsize=32)
def _same_tag(name: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"<(/?)" + re.escape(name) + rb"(?=[\s/>])" + _TAG_REST, re.I)


def _element_end(data: bytes, name: bytes, pos: int) -> int | None:
    """End of the element whose start tag `name` ends at `pos` (same-name nesting)."""
    depth = 1
    for m in _same_tag(name).finditer(data, pos):
        depth += -1 if m.group(1) else 1
        if depth == 0:
            return m.end()
    return None


def _marked_element(data: bytes, at: int) -> tuple[int, int] | None:
    """The element whose start tag holds the attribute found at `at`."""
    lt = data.rfind(b"<", 0, at)
    tag = _OPEN_TAG.match(data, lt) if lt >= 0 else None
    if tag is None or tag.end() <= at:
        return None
    end = _element_end(data, tag.group(1), tag.end())
    return (lt, end) if end is not None and end - lt <= HTML_BLOCK_MAX else None


def _text_marked_element(data: bytes, at: int) -> tuple[int, int] | None:
    """The innermost <div> or <p> whose text starts with the marker at `at`: walk back
    over the start tags (and white space) right before it."""
    q = at
    for _ in range(8):
        while q > 0 and data[q - 1] in b" \t\r\n":
            q -= 1
        lt = data.rfind(b"<", 0, q)
        tag = _OPEN_TAG.fullmatch(data, lt, q) if q and data[q - 1] == 0x3E and lt >= 0 else None
        if tag is None:
            return None
        if tag.group(1).lower() in (b"div", b"p"):
            end = _element_end(data, tag.group(1), tag.end())
            if end is None or end - lt > HTML_BLOCK_MAX \
                    or not _LINK_HINT.search(data, lt, end):
                return None
            return lt, end
        q = lt
    return None


def strip_html(data: bytes) -> bytes:
    cuts = [c for m in _ATTR_MARK.finditer(data) if (c := _marked_element(data, m.start()))]
    start = 0
    while (at := data.find(MARKER, start)) >= 0:
        start = at + 1
        if not any(s <= at < e for s, e in cuts) and (c := _text_marked_element(data, at)):
            cuts.append(c)
    pieces, pos = [], 0
    for s, e in sorted(cuts):
        if s >= pos:            # an element inside one already cut went with it
            pieces.append(data[pos:s])
            pos = e
    data = b"".join(pieces) + data[pos:]
    data = _ANCHOR.sub(lambda m: REMOVED if _has_chat_link(m.group(1)) else m.group(0), data)
    return _strip_urls(data)


# --- the message ---

def _strip_edit(raw: bytes, part: Part) -> tuple[int, int, bytes] | None:
    if part.cte in mime.IDENTITY_CTES and raw.find(b"/c/", part.body_start, part.end) < 0:
        return None                     # the common case: nothing to look at
    charset = part.charset or "us-ascii"
    if mime.known_charset(charset) and mime.ascii_codec(charset) is None:
        return None                     # UTF-16 and the like: our ASCII markers are not there
    try:
        data = mime.decode_body(raw, part)
    except TooBig:
        return None
    if mime.PGP_ARMOR in data:
        raise Unsafe("inline PGP")
    if b"/c/" not in data:
        return None
    new = strip_html(data) if part.ctype == "text/html" else strip_plain(data)
    if new == data:
        return None
    new = mime.encode_body(raw, part, new)
    mime.check_delimiters(new, part)
    return part.body_start, part.end, new


def strip_notices(raw: bytes) -> bytes | None:
    """The whole message without our notices and chat links, or None when nothing
    changed or the message must not be touched (signed, encrypted, inline PGP, or not
    safely parseable)."""
    try:
        root = mime.parse(raw, into_messages=True)
        if mime.sealed(root) or mime.armored(raw, root, attachments=True):
            return None
        edits = [e for p in root.walk() if p.is_text and (e := _strip_edit(raw, p))]
        return mime.splice(raw, edits) if edits else None
    except Unsafe:
        return None
