"""Raw MIME scanning for the visible notice (`mailtalk.notice`, `mailtalk.notice_strip`).

The notice changes one or two text parts and must leave every other byte of a mail as
it came: the header block, the other parts, boundaries, preamble and epilogue, line
endings, 8-bit data. So a message is never re-serialized with the `email` package (it
rewraps header fields and re-encodes parts); it is scanned in place:

* A header block ends at the first empty line (CRLF or LF). Every line in it must be a
  field or a continuation line, else the mail is `Unsafe` (left as it is).
* Only Content-Type, Content-Transfer-Encoding and Content-Disposition are read; a
  second copy of one of them is `Unsafe` (parsers would disagree on which one counts).
  `email.message.Message` parses the Content-Type parameters (quoting, RFC 2231).
* A multipart body is cut at its delimiter lines, found with `bytes.find` on
  `--boundary` at the start of a line (RFC 2046: then optional padding and the line
  end; the close delimiter adds `--`). The line break before a delimiter belongs to
  the delimiter. A line that starts with the delimiter and goes on with other
  characters, a missing close delimiter, an invalid boundary or a multipart with a
  transfer encoding is `Unsafe`: parsers disagree on such mails, so we do not guess.

The result is a tree of `Part`s holding offsets into the original bytes; nothing is
copied or decoded here, so a 20 MB attachment is only searched for delimiters. A change
is an edit `(start, end, replacement)`; `splice` joins the untouched slices around the
replacements in one pass (one copy of the mail). Only the chosen text parts are decoded
(`decode_body`) and re-encoded (`encode_body`), in their own charset and encoding.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.charset
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from functools import lru_cache

HEADER_MAX = 1 << 20          # a top-level header block larger than this: Unsafe
PART_HEADER_MAX = 64 << 10    # a body part's header block
DEPTH_MAX = 20                # multipart nesting
PARTS_MAX = 1000
TEXT_MAX = 4 << 20            # decoded size of a text part we change (attachments: any size)
IDENTITY_CTES = frozenset({"", "7bit", "8bit", "binary"})
# Signed or encrypted content anywhere in the tree: the whole mail is never touched.
SEALED_TYPES = frozenset({
    "multipart/signed", "multipart/encrypted",
    "application/pkcs7-mime", "application/x-pkcs7-mime",
    "application/pkcs7-signature", "application/x-pkcs7-signature",
    "application/pgp-encrypted", "application/pgp-signature", "application/pgp",
})
PGP_ARMOR = b"-----BEGIN PGP"

_BLANK_LINE = re.compile(rb"\n\r?\n")
_HEADER_BLOCK = re.compile(rb"(?:[!-9;-~]+[ \t]*:[^\n]*\n(?:[ \t][^\n]*\n)*)*\r?\n")
_FIELDS = re.compile(
    rb"^(content-(?:type|transfer-encoding|disposition))[ \t]*:([^\n]*\n(?:[ \t][^\n]*\n)*)",
    re.I | re.M)
_FOLD = re.compile(rb"\r?\n")
_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]")
_PROBE = "<body>\r\n--=:/ mailtalk"
_CHARSET = re.compile(r"[A-Za-z0-9!#$%&'+^_`{}~.:-]{1,40}")     # RFC 2978 names


class Unsafe(Exception):
    """The mail cannot be changed safely: the caller leaves it as it is."""


class TooBig(Unsafe):
    """A text part over TEXT_MAX."""


@dataclass(eq=False)
class Part:
    """One node of the MIME tree, as offsets into the raw message."""
    start: int              # first byte of the part's header block
    body_start: int
    end: int                # end of the body (the line break before a delimiter excluded)
    ctype: str              # lowercased "type/subtype"
    charset: str | None
    cte: str                # lowercased; "" when absent
    attachment: bool        # Content-Disposition: attachment
    boundaries: tuple[bytes, ...]       # of the enclosing multiparts
    children: list[Part] = field(default_factory=list)

    @property
    def is_text(self) -> bool:
        return self.ctype in ("text/plain", "text/html")

    def walk(self) -> Iterator[Part]:
        yield self
        for child in self.children:
            yield from child.walk()


def split_header(raw: bytes) -> tuple[bytes, bytes]:
    """(header block including the empty line that ends it, body). Without an empty
    line the whole message is the header block and the body is empty."""
    end = _header_stop(raw, 0, len(raw))
    return (raw, b"") if end is None else (raw[:end], raw[end:])


def _header_stop(raw: bytes, start: int, stop: int) -> int | None:
    if raw.startswith(b"\n", start, stop):
        return start + 1
    if raw.startswith(b"\r\n", start, stop):
        return start + 2
    m = _BLANK_LINE.search(raw, start, stop)
    return None if m is None else m.end()


def header_end(raw: bytes, start: int, stop: int, limit: int) -> int:
    """Offset just past the empty line that ends the (checked) header block at `start`."""
    end = _header_stop(raw, start, min(stop, start + limit))
    if end is None or _HEADER_BLOCK.fullmatch(raw, start, end) is None:
        raise Unsafe("no header block")
    return end


def _fields(raw: bytes, start: int, stop: int) -> dict[str, str]:
    found: dict[str, str] = {}
    for m in _FIELDS.finditer(raw, start, stop):
        name = m.group(1).lower().decode("ascii")
        if name in found:
            raise Unsafe(f"two {name} fields")
        found[name] = _FOLD.sub(b"", m.group(2)).strip().decode("latin-1")
    return found


@lru_cache(maxsize=512)
def _content_type(value: str) -> tuple[str, str | None, str | None]:
    """(type/subtype, charset, boundary) of a Content-Type value."""
    ctype = value.split(";", 1)[0].strip().lower()
    if _TYPE.fullmatch(ctype) is None:
        raise Unsafe("bad Content-Type")
    msg = Message()
    msg["Content-Type"] = value
    return ctype, msg.get_content_charset(), msg.get_boundary()


class _Scanner:
    def __init__(self, raw: bytes, into_messages: bool) -> None:
        self.raw = raw
        self.into_messages = into_messages
        self.count = 0

    def part(self, start: int, body_start: int, end: int, default: str,
             boundaries: tuple[bytes, ...], depth: int) -> Part:
        self.count += 1
        if self.count > PARTS_MAX or depth > DEPTH_MAX:
            raise Unsafe("too many parts or too deep")
        f = _fields(self.raw, start, body_start)
        ctype, charset, boundary = (_content_type(f["content-type"]) if "content-type" in f
                                    else (default, None, None))
        disposition = f.get("content-disposition", "").split(";", 1)[0].strip().lower()
        part = Part(start, body_start, end, ctype, charset,
                    f.get("content-transfer-encoding", "").lower(),
                    disposition == "attachment", boundaries)
        if ctype.startswith("multipart/"):
            if part.cte not in IDENTITY_CTES or boundary is None \
                    or _BOUNDARY.fullmatch(boundary) is None:
                raise Unsafe("multipart without a usable boundary")
            b = boundary.encode("ascii")
            child_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
            for s, stop, delim in self.split(body_start, end, b):
                bs = min(header_end(self.raw, s, delim, PART_HEADER_MAX), stop)
                part.children.append(
                    self.part(s, bs, stop, child_default, boundaries + (b,), depth + 1))
        elif (self.into_messages and ctype in ("message/rfc822", "message/global")
              and part.cte in IDENTITY_CTES):
            try:        # an attached mail that does not parse stays an opaque leaf
                bs = header_end(self.raw, body_start, end, HEADER_MAX)
                part.children.append(
                    self.part(body_start, bs, end, "text/plain", boundaries, depth + 1))
            except Unsafe:
                part.children.clear()
        return part

    def split(self, start: int, end: int, boundary: bytes) -> list[tuple[int, int, int]]:
        """(content start, content end, delimiter offset) of each body part."""
        raw, delim = self.raw, b"--" + boundary
        parts: list[tuple[int, int, int]] = []
        pos, content = start, -1
        while True:
            i = raw.find(delim, pos, end)
            if i < 0:
                raise Unsafe("no close delimiter")
            if i > start and raw[i - 1] != 0x0A:     # not at the start of a line
                pos = i + 1
                continue
            k = j = i + len(delim)
            close = raw.startswith(b"--", j, end)
            if close:
                k += 2
            while k < end and raw[k] in b" \t":
                k += 1
            if raw.startswith(b"\r\n", k, end):
                line_end = k + 2
            elif raw.startswith(b"\n", k, end) or (close and k == end):
                line_end = k + 1 if k < end else k
            else:
                raise Unsafe("a line that starts like a delimiter")
            if content >= 0:
                stop = i - 2 if raw.startswith(b"\r\n", i - 2, i) else i - 1
                if stop < content:
                    raise Unsafe("empty body part")
                parts.append((content, stop, i))
            if close:
                return parts
            pos = content = line_end


def parse(raw: bytes, *, into_messages: bool = False) -> Part:
    """The MIME tree of a whole message. `into_messages`: also parse attached mails
    (message/rfc822) as children. Raises Unsafe."""
    body_start = header_end(raw, 0, len(raw), HEADER_MAX)
    return _Scanner(raw, into_messages).part(0, body_start, len(raw), "text/plain", (), 0)


def sealed(root: Part) -> bool:
    return any(p.ctype in SEALED_TYPES for p in root.walk())


def armored(raw: bytes, root: Part, attachments: bool) -> bool:
    """Inline PGP in a text part, as sent (a base64 part is checked once decoded)."""
    return any(raw.find(PGP_ARMOR, p.body_start, p.end) >= 0 for p in root.walk()
               if p.ctype.startswith("text/") and (attachments or not p.attachment))


def splice(raw: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """`raw` with each (start, end) range replaced; one copy of the untouched bytes."""
    view, pieces, pos = memoryview(raw), [], 0
    for start, end, data in sorted(edits, key=lambda e: e[:2]):
        if start < pos:
            raise Unsafe("overlapping edits")
        pieces += (view[pos:start], data)
        pos = end
    pieces.append(view[pos:])
    return b"".join(pieces)


def _codec(charset: str) -> codecs.CodecInfo | None:
    if _CHARSET.fullmatch(charset) is None:
        return None
    try:
        return codecs.lookup(email.charset.ALIASES.get(charset, charset))
    except (LookupError, ValueError):
        return None


@lru_cache(maxsize=128)
def ascii_codec(charset: str) -> str | None:
    """The Python codec of a MIME charset if ASCII text is the same bytes in it (so
    markup and our marker can be found and inserted as bytes); else None (UTF-16,
    UTF-7, unknown names)."""
    info = _codec(charset)
    try:
        same = info is not None and _PROBE.encode(info.name) == _PROBE.encode("ascii")
    except (LookupError, ValueError, UnicodeError):
        return None
    return info.name if info is not None and same and info.name != "utf-7" else None


def known_charset(charset: str) -> bool:
    return _codec(charset) is not None


def transport_eol(raw: bytes, part: Part) -> bytes:
    """The line ending the part is written with (its body's first, else the header's)."""
    i = raw.find(b"\n", part.body_start, part.end)
    if i < 0:
        i = raw.rfind(b"\n", 0, part.body_start)
    return b"\r\n" if i > 0 and raw[i - 1] == 0x0D else b"\n"


def data_eol(data: bytes, fallback: bytes) -> bytes:
    """The line ending of decoded text (base64 text may differ from its transport)."""
    i = data.find(b"\n")
    if i < 0:
        return fallback
    return b"\r\n" if i > 0 and data[i - 1] == 0x0D else b"\n"


def decode_body(raw: bytes, part: Part) -> bytes:
    """The part's body with its transfer encoding undone (still in its charset)."""
    body = memoryview(raw)[part.body_start:part.end]
    if part.cte in IDENTITY_CTES:
        data = bytes(body)
    elif part.cte == "base64":
        if len(body) > TEXT_MAX * 4 // 3 + TEXT_MAX // 38 + 4:
            raise TooBig("text part too large")
        try:
            data = binascii.a2b_base64(body)
        except binascii.Error as e:
            raise Unsafe("bad base64") from e
    elif part.cte == "quoted-printable":
        data = binascii.a2b_qp(body)
    else:
        raise Unsafe(f"unknown transfer encoding {part.cte!r}")
    if len(data) > TEXT_MAX:
        raise TooBig("text part too large")
    return data


def encode_body(raw: bytes, part: Part, data: bytes) -> bytes:
    """`data` in the part's transfer encoding, with its line ending, ready to replace
    raw[part.body_start:part.end]."""
    if part.cte in IDENTITY_CTES:
        return data
    eol = transport_eol(raw, part)
    if part.cte == "base64":
        # 76-character lines; the body keeps the line breaks it ended with
        body = raw[part.body_start:part.end]
        tail = body[len(body.rstrip(b"\r\n")):]
        out = base64.encodebytes(data).rstrip(b"\n")
        return (out if eol == b"\n" else out.replace(b"\n", eol)) + tail
    # Quoted-printable, one text line at a time, so that the decoded bytes come back
    # exactly (binascii's text mode turns lone CR/LF into line breaks). With
    # istext=False, CR and LF inside a line are encoded and the only raw line breaks
    # are the soft ones, written by binascii as LF.
    lines = data.split(eol)
    encoded = (binascii.b2a_qp(line, quotetabs=False, istext=False) for line in lines)
    out = eol.join(encoded)
    return out if eol == b"\n" else out.replace(b"=\n", b"=" + eol)


def check_delimiters(data: bytes, part: Part) -> None:
    """New bytes for a part must not contain a delimiter line of an enclosing multipart."""
    for b in part.boundaries:
        d = b"--" + b
        if data.startswith(d) or b"\n" + d in data:
            raise Unsafe("the new text would contain a delimiter line")
