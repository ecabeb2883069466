"""An SMTP client that records every reply: one transaction as Postfix's smtp client
makes it (smtplib; tests run it in a thread beside the servers' loop)."""

from __future__ import annotations

import smtplib
from dataclasses import dataclass, field


@dataclass
class Replies:
    mail: tuple[int, bytes] = (0, b"")
    rcpt: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    data: tuple[int, bytes] | None = None


def send(host: str, port: int, mail_from: str, rcpts: list[str], data: bytes,
         xforward: str | None = None, mail_options: list[str] | None = None) -> Replies:
    """One transaction as Postfix's smtp client makes it; every reply is recorded."""
    out = Replies()
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.ehlo("postfix.test")
        if xforward:
            code, _ = s.docmd("XFORWARD", xforward)
            assert code == 250, code
        out.mail = s.mail(mail_from, mail_options or [])
        if out.mail[0] != 250:
            return out
        for r in rcpts:
            out.rcpt[r] = s.rcpt(r)
        if any(c == 250 for c, _ in out.rcpt.values()):
            try:
                out.data = s.data(data)
            except smtplib.SMTPDataError as e:
                out.data = (e.smtp_code, e.smtp_error)
    return out
