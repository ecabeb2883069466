"""SMTP clients for tests: the real `swaks`, and smtplib for byte-exact messages."""

from __future__ import annotations

import shutil
import smtplib
import subprocess
from typing import Iterable

SWAKS = "/usr/bin/swaks"


def swaks_available() -> str | None:
    return None if shutil.which(SWAKS) else f"{SWAKS} is missing (apt-get install swaks)"


def swaks(server: str, port: int, *, to: str | Iterable[str], from_: str = "sender@a.test",
          auth: tuple[str, str] | None = None, auth_type: str = "PLAIN",
          data: bytes | None = None, headers: dict[str, str] | None = None,
          body: str | None = None, subject: str | None = None, helo: str | None = None,
          extra: Iterable[str] = (), timeout: float = 30.0) -> tuple[int, str]:
    """Send one mail with swaks; return (exit status, transcript).

    `data` is the whole message (through stdin; swaks makes its line ends CRLF,
    and the mail arrives with exactly these bytes); otherwise swaks builds one from `subject`, `headers` and `body`.
    Exit status 0: accepted; 23-25: refused at MAIL/RCPT/DATA; 28: AUTH failed.
    """
    rcpts = [to] if isinstance(to, str) else list(to)
    argv = [SWAKS, "--server", server, "--port", str(port), "--from", from_,
            "--to", ",".join(rcpts), "--timeout", str(int(timeout))]
    if helo:
        argv += ["--helo", helo]
    if auth:
        argv += ["--auth", auth_type, "--auth-user", auth[0], "--auth-password", auth[1]]
    if data is not None:
        argv += ["--data", "-"]
        # swaks ends the data with CRLF "." itself: without this, a message that
        # ends in a line end (as every message does) would gain an empty line.
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
    else:
        if subject is not None:
            argv += ["--header", f"Subject: {subject}"]
        for name, value in (headers or {}).items():
            argv += ["--add-header", f"{name}: {value}"]
        if body is not None:
            argv += ["--body", body]
    argv += list(extra)
    r = subprocess.run(argv, input=data if data is not None else b"", capture_output=True,
                       timeout=timeout + 10)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def make_message(*, from_: str = "alice@a.test", to: str | Iterable[str] = "bob@b.test",
                 subject: str = "test", body: str | bytes = "hello\r\n",
                 headers: dict[str, str] | None = None,
                 message_id: str | None = None) -> bytes:
    """A message with CRLF line ends (smtplib sends bare LFs as they are).

    A str body has its line ends made CRLF and is encoded as UTF-8; a bytes body is
    used as it is (for 8-bit and long-line tests).
    """
    rcpts = [to] if isinstance(to, str) else list(to)
    lines = [f"From: {from_}", f"To: {', '.join(rcpts)}", f"Subject: {subject}",
             "Date: Sun, 29 Nov 2026 07:00:00 +0000"]
    if message_id:
        lines.append(f"Message-ID: {message_id}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    if isinstance(body, str):
        body = body.replace("\r\n", "\n").replace("\n", "\r\n").encode()
    return head + body


def smtp_send(host: str, port: int, message: bytes, *, sender: str,
              rcpts: Iterable[str], auth: tuple[str, str] | None = None,
              timeout: float = 30.0, smtputf8: bool = False) -> dict[str, tuple[int, bytes]]:
    """Send `message` byte for byte with smtplib; return the refused recipients
    (empty when all were accepted). Raises smtplib.SMTPException on a refusal of
    the whole mail, so a test sees the reply code."""
    options = ["SMTPUTF8"] if smtputf8 else []
    with smtplib.SMTP(host, port, timeout=timeout) as s:
        s.ehlo("client.test")
        if auth:
            s.login(*auth)
        if any(b > 127 for b in message):
            options.append("BODY=8BITMIME")
        return s.sendmail(sender, list(rcpts), message, mail_options=options)
