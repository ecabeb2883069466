"""Looking into raw messages as delivered (Maildir, LF) or sent (SMTP, CRLF)."""

from __future__ import annotations

import email.parser
import email.policy
import re


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """(header block, body) of a message, split at the first empty line; works for
    LF (Maildir) and CRLF (SMTP) line ends. The header block keeps its last line
    end; the body is returned byte for byte."""
    m = re.search(rb"\r?\n\r?\n", raw)
    if m is None:
        return raw, b""
    first_eol = raw[m.start():m.end()].split(b"\n")[0] + b"\n"
    return raw[:m.start()] + first_eol, raw[m.end():]


def header_values(raw: bytes, name: str) -> list[str]:
    """Every value of header `name` in a raw message (unfolded, as text)."""
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
        split_message(raw)[0] + b"\n\n", headersonly=True)
    return [str(v) for v in msg.get_all(name, [])]
