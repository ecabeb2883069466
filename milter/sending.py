"""The sending milter (pymilter) on the sender's MTA.

On every message it deletes every copy of X-Messenger-Account, X-Mail-ID and
X-Sender-Online (any case, any count): only this milter may set the first two,
and only the recipient's hook the third. It removes mailtalk notices (and any chat
link) that a reply quotes or a forward carries (`mailtalk.notice_strip`): a link is
its recipient's alone and must not travel on. For a sender who logged in with SASL
(`{auth_authen}` at MAIL FROM) as an account of one of our domains it adds
X-Messenger-Account and a fresh X-Mail-ID, and puts the record of the mail into
the outbox (a local SQLite insert; the hand-over runs in the background).

Errors of ours never hold mail up: every callback catches its own exceptions,
logs them with the queue ID and lets the message go on. Forged copies are
deleted first, whatever else fails (they must never pass); if making the
Mail-ID or the record fails, no header is added (the mail passes as it came,
minus forged copies). libmilter's own policy for an exception that escapes
anyway is set to CONTINUE, not its default tempfail.

libmilter runs in a thread of its own (`milter.main()`), one more thread per SMTP
connection; the asyncio loop keeps the outbox hand-over.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Protocol

import Milter

from mailtalk import headers, metrics
from mailtalk.accounts import account_for_login
from mailtalk.config import Config, ConfigError, DomainsConfig
from mailtalk.constants import HDR_ACCOUNT, HDR_DIGEST, HDR_MAIL_ID, OUR_HEADERS
from mailtalk.mailid import MailIds, is_digest, load_or_create_site_key, outbox_api_token
from mailtalk.notice import MARKER, split_header
from mailtalk.notice_strip import strip_notices
from mailtalk_milter import libmilter_host, milter_socket
from mailtalk.mailrecord import HEADERS_MAX_BYTES, MailRecord, make_record, raw_body_cap
from mailtalk_milter.outbox import Handover, Outbox

log = logging.getLogger("mailtalk.milter")

MILTER_NAME = "mailtalk"
NOQUEUE = "NOQUEUE"
MAX_RECIPIENTS = 1000          # recorded per mail; Postfix's default limit is 1000
_OURS = {h.lower(): h for h in OUR_HEADERS}


class RecordSink(Protocol):
    """Where records go: the Outbox, or a stand-in in tests."""

    def add(self, record: MailRecord) -> None: ...


@dataclass
class Engine:
    """What every connection shares; made once at start."""
    domains: DomainsConfig
    mail_ids: MailIds
    outbox: RecordSink
    body_text_limit: int
    site_key: bytes = b""      # to know the presence service's digests (mailid.is_digest)


@dataclass
class _Message:
    """Per-message state; envfrom makes a new one (a connection carries many)."""
    account: str | None = None
    queue_id: str = NOQUEUE
    failed: bool = False
    recipients: list[str] = field(default_factory=list)
    ours: dict[str, int] = field(default_factory=dict)    # lower-case name -> count
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    header_bytes: int = 0
    body: list[bytes] = field(default_factory=list)     # all of it: notices may be anywhere


class SendingMilter(Milter.Base):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.msg = _Message()

    # -- helpers

    def _qid(self) -> str:
        qid = self.getsymval("i")
        if qid:
            self.msg.queue_id = qid
        return self.msg.queue_id

    def _failed(self, where: str) -> int:
        log.exception("%s: internal error in %s; the mail passes unchanged",
                      self.msg.queue_id, where)
        self.msg.failed = True
        return Milter.CONTINUE

    # -- callbacks (everything that is not overridden is skipped by negotiation)

    # Only the macros we use. Over inet: this is also speed: with Postfix's whole
    # default MAIL FROM list a bare milter ran at 0.23x of no milter, with these two
    # at 0.54x (bench/milter_bench.py, bare-inet).
    @Milter.noreply
    @Milter.symlist("{auth_authen}", "i")
    def envfrom(self, mailfrom: str, *params: str) -> int:
        self.msg = _Message()
        try:
            self._qid()
            login = self.getsymval("{auth_authen}")
            if login:
                self.msg.account = account_for_login(login, self.engine.domains)
                if self.msg.account is None:
                    log.debug("%s: login %r is not an account of ours: no headers",
                              self.msg.queue_id, login)
        except Exception:
            return self._failed("envfrom")
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, to: str, *params: str) -> int:
        if self.msg.account and len(self.msg.recipients) < MAX_RECIPIENTS:
            self.msg.recipients.append(to)
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.decode("bytes")
    def header(self, name: str, value: bytes) -> int:
        try:
            lower = name.lower()
            if lower in _OURS:
                self.msg.ours[lower] = self.msg.ours.get(lower, 0) + 1
            elif self.msg.header_bytes < HEADERS_MAX_BYTES:
                self.msg.headers.append((name, value))
                self.msg.header_bytes += len(name) + len(value) + 4
        except Exception:
            return self._failed("header")
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        self.msg.body.append(chunk)
        return Milter.CONTINUE

    @Milter.symlist("i")
    def eom(self) -> int:
        metrics.MILTER_MAILS.inc()
        qid = self.msg.queue_id
        try:
            qid = self._qid()
            self._delete_ours(qid)
        except Exception:
            self._failed("eom (deleting forged headers)")
        m = self.msg
        if m.failed:
            return Milter.CONTINUE
        body = b"".join(m.body)
        try:
            body = self._strip_notices(qid, body)
        except Exception:
            return self._failed("eom (removing notices)")
        if not m.account:
            return Milter.CONTINUE
        try:
            mail_id = self.engine.mail_ids.issue(m.account)
            record = make_record(
                mail_id=mail_id, account=m.account, queue_id=qid, recipients=m.recipients,
                headers=m.headers, body=body[:raw_body_cap(self.engine.body_text_limit)],
                body_text_limit=self.engine.body_text_limit)
            self.engine.outbox.add(record)
        except Exception:
            return self._failed("eom (recording the mail)")
        try:
            self.addheader(HDR_ACCOUNT, m.account)
            self.addheader(HDR_MAIL_ID, mail_id)
        except Exception:
            # Half added at worst; the mail goes on all the same.
            return self._failed("eom (adding headers)")
        metrics.MILTER_CLAIMS.inc()
        log.info("%s: account=%s mail_id=%s recipients=%d", qid, m.account, mail_id,
                 len(m.recipients))
        return Milter.CONTINUE

    def _is_digest(self) -> bool:
        """The presence service's digest (its X-Mailtalk-Digest fits its Message-ID):
        its chat link is the recipient's own and stays."""
        if not self.engine.site_key:
            return False
        found = {n.lower(): v.decode("ascii", "replace") for n, v in self.msg.headers
                 if n.lower() in ("message-id", HDR_DIGEST.lower())}
        return is_digest(self.engine.site_key, found.get("message-id", ""),
                         found.get(HDR_DIGEST.lower(), ""))

    def _strip_notices(self, qid: str, body: bytes) -> bytes:
        """The body without mailtalk notices and chat links; replaced in the MTA's copy
        when anything was removed. Signed or encrypted mail is never touched."""
        if MARKER.encode() not in body and b"/c/" not in body:
            return body                  # the usual case: nothing that could be one
        if self._is_digest():
            return body
        head = b"".join(name.encode("ascii", "replace") + b": "
                        + headers.crlf_folds(value) + b"\r\n"
                        for name, value in self.msg.headers) + b"\r\n"
        stripped = strip_notices(head + body)
        if stripped is None:
            return body
        body = stripped[len(split_header(stripped)[0]):]
        self.replacebody(body)
        log.info("%s: removed quoted mailtalk notices or chat links", qid)
        return body

    def _delete_ours(self, qid: str) -> None:
        """Delete every copy of our headers that came with the message.

        libmilter counts a name's copies from 1, case-insensitively (Postfix and
        Sendmail both). Deleting from the last copy to the first keeps every index
        valid whether or not the MTA still counts the copies it already deleted.
        """
        for lower, count in self.msg.ours.items():
            for index in range(count, 0, -1):
                self.chgheader(_OURS[lower], index, "")
        if self.msg.ours:
            metrics.MILTER_FORGED.inc(sum(self.msg.ours.values()))
            log.warning("%s: deleted %d forged cop%s of %s", qid, sum(self.msg.ours.values()),
                        "y" if sum(self.msg.ours.values()) == 1 else "ies",
                        ", ".join(_OURS[n] for n in self.msg.ours))

    def abort(self) -> int:
        self.msg = _Message()
        return Milter.CONTINUE

    def close(self) -> int:
        return Milter.CONTINUE


def install(engine: Engine) -> None:
    """Make libmilter (or TestCtx) create a SendingMilter per connection."""
    Milter.factory = lambda: SendingMilter(engine)


# -- running it

class Running:
    def __init__(self, host: libmilter_host.Host, handover: Handover, outbox: Outbox) -> None:
        self._host = host
        self._handover = handover
        self._outbox = outbox

    async def close(self) -> None:
        await self._host.stop()
        await self._handover.close()
        left = self._outbox.count()
        for gauge in (metrics.OUTBOX_BACKLOG, metrics.OUTBOX_AGE):
            gauge.set_function(lambda: 0.0)      # the outbox is gone: a scrape must not fail
        self._outbox.close()
        log.info("milter stopped" + (f" ({left} mail records wait in the outbox for the "
                                     f"next start)" if left else ""))


async def start(cfg: Config, stop: asyncio.Event) -> Running:
    try:        # before anything global (Milter.factory) is touched
        milter_socket.claim("the sending milter ([milter])")
    except RuntimeError as e:
        raise ConfigError(f"{cfg.source}: {e}") from None
    key = load_or_create_site_key(cfg.site.secret_file)
    mc = cfg.milter
    try:
        outbox = Outbox(mc.outbox)
    except (OSError, sqlite3.Error) as e:
        raise ConfigError(f"{cfg.source}: [milter] outbox: cannot open {mc.outbox}: "
                          f"{getattr(e, 'strerror', None) or e}") from None
    handover = Handover(outbox, mc.presence_api, outbox_api_token(key), mc.outbox_retry_max,
                        max_age=cfg.site.mail_id_lifetime_days * 86400.0)
    outbox.on_added = handover.wake_threadsafe
    metrics.OUTBOX_BACKLOG.set_function(outbox.count)
    metrics.OUTBOX_AGE.set_function(outbox.oldest_age)
    install(Engine(cfg.domains, MailIds(key, cfg.site.mail_id_lifetime_days), outbox,
                   mc.body_text_limit, key))

    try:
        host = libmilter_host.serve(name=MILTER_NAME, spec=mc.socket, timeout=mc.timeout,
                                    socket_group=mc.socket_group, stop=stop,
                                    where=f"{cfg.source}: [milter] socket")
    except ConfigError:
        outbox.close()
        raise
    handover.start()
    log.info("milter listening on %s (outbox %s, hand-over to %s)", mc.socket, mc.outbox,
             mc.presence_api)
    return Running(host, handover, outbox)
