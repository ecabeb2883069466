"""`mailtalk trial FROM TO...`: one mail through this site's running services, as the
MTAs would pass it, without an MTA: the sending milter (as Postfix calls it after
FROM logged in), the presence service (the mail's record), the content filter (as
Postfix hands it over), and the re-injection address, where the trial itself takes
the mail back and prints what the recipients would see.

For a trial on one host: the re-injection address must be free (no Postfix behind
it), and FROM's domain must be found (`[dns] static`, which the embedded defaults set
for `localhost`, or DNS). Exit codes: 0 the mail came back with X-Sender-Online,
1 it did not (the output says where it stopped), 2 usage.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import logging
import secrets
import smtplib
import sqlite3
import sys
import threading
import time
from datetime import datetime, timezone
from email.utils import format_datetime, make_msgid
from typing import Any

from aiosmtpd.controller import Controller

from mailtalk.accounts import account_domain
from mailtalk.cli import milter_client
from mailtalk.config import Config
from mailtalk.constants import HDR_MAIL_ID, HDR_ONLINE
from mailtalk.notice import MARKER

RECORD_WAIT = 10.0              # seconds for the milter's outbox to hand the record over


def _say(text: str) -> None:
    print(text, flush=True)


def _err(text: str) -> int:
    print(f"mailtalk trial: {text}", file=sys.stderr)
    return 1


class _Catch:
    """aiosmtpd handler at the re-injection address: keeps what the filter sends."""

    def __init__(self, expected: int) -> None:
        self.copies: list[tuple[list[str], bytes]] = []
        self._expected = expected
        self.done = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.copies.append((list(envelope.rcpt_tos), envelope.original_content or b""))
        if sum(len(r) for r, _ in self.copies) >= self._expected:
            self.done.set()
        return "250 2.0.0 kept by mailtalk trial"


def _message(sender: str, recipients: list[str]) -> tuple[list[tuple[str, str]], bytes]:
    headers = [("From", sender), ("To", ", ".join(recipients)),
               ("Subject", "mailtalk trial"), ("Date", format_datetime(datetime.now(timezone.utc))),
               ("Message-ID", make_msgid("trial", account_domain(sender)))]
    body = (b"This mail was sent by `mailtalk trial` through the sending milter and\r\n"
            b"the content filter of this site.\r\n")
    return headers, body


def _wait_handed_over(cfg: Config) -> bool:
    """True once the milter's outbox is empty: the presence service has the record."""
    deadline = time.monotonic() + RECORD_WAIT
    while True:
        try:
            db = sqlite3.connect(f"file:{cfg.milter.outbox}?mode=ro", uri=True, timeout=2)
            try:
                left = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            finally:
                db.close()
        except sqlite3.Error:
            left = -1
        if left == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _send_to_filter(cfg: Config, sender: str, recipients: list[str], data: bytes) -> str:
    f = cfg.filter
    with smtplib.SMTP(f.listen.host, f.listen.port, timeout=f.lookup_timeout + 30) as smtp:
        refused = smtp.sendmail(sender, recipients, data)
    return "" if not refused else f"the filter refused {', '.join(refused)}"


def _show(copies: list[tuple[list[str], bytes]]) -> bool:
    shown = False
    for rcpts, raw in copies:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        online = msg.get_all(HDR_ONLINE) or []
        _say(f"\nTo {', '.join(rcpts)}:")
        for value in online:
            _say(f"  {HDR_ONLINE}: {' '.join(str(value).split())}")
            shown = True
        if not online:
            _say(f"  no {HDR_ONLINE} header")
        part = msg.get_body(("plain",))
        lines = (part.get_content() if part is not None else "").splitlines()
        if lines and lines[0].startswith(MARKER):
            _say("  notice at the top of the text:")
            for line in lines[:next((i for i, t in enumerate(lines) if not t.strip()),
                                    len(lines))]:
                _say(f"    {line}")
    return shown


def trial(cfg: Config, args: argparse.Namespace) -> int:
    sender, recipients = args.sender.lower(), [r.lower() for r in args.recipients]
    if cfg.filter.mode != "smtp":
        return _err(f"[filter] mode = \"{cfg.filter.mode}\": the trial speaks to the "
                    f"content filter (mode = \"smtp\"); send a mail through your MTA instead")
    headers, body = _message(sender, recipients)
    qid = "TRIAL" + secrets.token_hex(4).upper()
    try:
        result = milter_client.pass_through(
            cfg.milter.socket, sender=sender, recipients=recipients, login=sender,
            headers=headers, body=body, queue_id=qid)
    except milter_client.MilterError as e:
        return _err(f"{e}: is `mailtalk run` running?")
    added = ", ".join(f"{n}: {v}" for n, v in result.added) or "nothing"
    _say(f"sending milter ({cfg.milter.socket}), as if {sender} had logged in: added {added}")
    if not any(n == HDR_MAIL_ID for n, _ in result.added):
        return _err(f"no {HDR_MAIL_ID}: {sender} must be an address of [domains] names "
                    f"({', '.join(cfg.domains.names)})")
    if not _wait_handed_over(cfg):
        return _err(f"the milter's outbox ({cfg.milter.outbox}) did not hand the record to "
                    f"the presence service within {RECORD_WAIT:.0f} s; see the service's log")
    _say(f"presence service ({cfg.milter.presence_api}): has the mail's record")

    logging.getLogger("mail.log").setLevel(logging.WARNING)   # aiosmtpd's per-command lines
    catch = _Catch(len(recipients))
    back = cfg.filter.reinject
    controller = Controller(catch, hostname=back.host, port=back.port)
    try:
        controller.start()
    except (OSError, RuntimeError) as e:
        return _err(f"cannot listen on {back} ([filter] reinject) to take the mail back: "
                    f"{e}. With Postfix behind it, send a real mail instead")
    try:
        data = b"".join(f"{n}: {v}\r\n".encode() for n, v in result.headers)
        problem = _send_to_filter(cfg, sender, recipients, data + b"\r\n" + result.body)
        if problem:
            return _err(problem)
        _say(f"content filter ({cfg.filter.listen}): accepted; taken back at {back}")
        if not catch.done.wait(cfg.filter.lookup_timeout + 30):
            return _err("the filter did not hand every copy back in time")
    except OSError as e:
        return _err(f"cannot send to the content filter at {cfg.filter.listen}: {e}")
    finally:
        controller.stop()
    if not _show(catch.copies):
        return 1
    _say(f"\nLog in as {sender} at {cfg.presence.public_url}/ and run this again: the "
         f"header then says yes. A chat= link opens that recipient's chat with {sender}.")
    return 0
