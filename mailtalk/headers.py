"""A message's header fields as raw bytes: split, read, strip, without re-serializing.

The receiving side never parses and re-writes a message with the `email` package:
apart from the header lines removed or prepended, every byte (8-bit, UTF-8, long
lines, CRLF or LF) passes unchanged, so a DKIM signature over the original verifies.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_RECEIVED_ID = re.compile(rb"\bid\s+([A-Za-z0-9]{6,32})\b")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")


def split_message(raw: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its continuation lines and line ends) and the rest.

    The rest starts with the empty line that ends the header, so
    `b"".join(fields) + rest == raw` always holds. A line that is neither a field start
    nor a continuation (e.g. an mbox `From ` line) is kept as a field of its own.
    """
    fields: list[bytes] = []
    pos = 0
    n = len(raw)
    while pos < n:
        end = raw.find(b"\n", pos)
        end = n if end < 0 else end + 1
        line = raw[pos:end]
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
        pos = end
    return fields, raw[pos:]


def field_name(f: bytes) -> bytes | None:
    """The lower-cased name of a field (`Name :` obsolete spacing allowed), or None."""
    name, sep, _ = f.partition(b":")
    if not sep:
        return None
    name = name.rstrip(b" \t")
    if not name or any(c <= 32 or c > 126 for c in name):
        return None
    return name.lower()


def field_value(f: bytes) -> str:
    """The unfolded value of a field, as text (non-ASCII becomes U+FFFD)."""
    value = _FOLD.sub(b"", f.partition(b":")[2]).rstrip(b"\r\n")
    return value.decode("ascii", errors="replace").strip()


def crlf_folds(value: bytes) -> bytes:
    """A header value as libmilter hands it over, with its folds as CRLF."""
    return value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def values_of(fields: Sequence[bytes], name: str) -> list[str]:
    key = name.lower().encode()
    return [field_value(f) for f in fields if field_name(f) == key]


def eol_of(raw: bytes) -> bytes:
    """The message's own line end (CRLF from SMTP; LF if its first line ends so)."""
    end = raw.find(b"\n")
    return b"\n" if end > 0 and raw[end - 1:end] != b"\r" else b"\r\n"


def without(fields: Sequence[bytes], name: str) -> tuple[list[bytes], int]:
    """(the fields without any copy of `name`, in any case, folded or not; how many).

    A field that hides a copy behind a lone CR (`X-Note: x\rX-Sender-Online: ...`:
    we split lines on LF, a MIME parser later may split on the CR) goes whole: RFC 5322
    allows no lone CR, so the field is malformed anyway, and dropping one field of a
    mail is no bounce."""
    key = name.lower().encode()
    hidden = re.compile(rb"\r(?!\n)[ \t]*" + re.escape(key) + rb"[ \t]*:", re.IGNORECASE)
    kept = [f for f in fields if field_name(f) != key and not (b"\r" in f and hidden.search(f))]
    return kept, len(fields) - len(kept)


def queue_id_of(fields: Sequence[bytes], xforward_ident: str | None = None) -> str:
    """Postfix's queue ID: XFORWARD IDENT, else the `id` of the topmost Received."""
    if xforward_ident and re.fullmatch(r"[A-Za-z0-9]{1,64}", xforward_ident):
        return xforward_ident
    for f in fields:
        if field_name(f) == b"received":
            m = _RECEIVED_ID.search(f)
            return m.group(1).decode() if m else "-"
    return "-"
