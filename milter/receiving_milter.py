"""The receiving logic as a pymilter milter: for Sendmail (which has no after-queue
content filter), or a Postfix that prefers milters. `[filter] mode = "milter"`.

Same rules as the content filter: every incoming X-Sender-Online is deleted, always;
with exactly one well-formed X-Messenger-Account and X-Mail-ID the presence lookup is
asked (bounded by `[filter] lookup_timeout`), and X-Sender-Online is added.

One milter transaction carries one copy of the message for all its recipients, and a
milter cannot split it: it can only change the one copy every recipient gets. A chat
link names one recipient and must never reach another, so:
- one recipient: the full header with that recipient's link;
- several recipients: `X-Sender-Online: unknown` without a link (and no lookup).
The content filter (Postfix) has no such limit: it re-injects one copy per recipient.

Errors of ours never hold mail up: forged copies are deleted first; any later failure
lets the mail pass without our header (libmilter's exception policy is CONTINUE).
libmilter serves one milter per process, so this mode cannot share a process with
the sending milter (`[milter]`): it runs as `mailtalk -c FILE filter` of its own.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import Milter

from mailtalk.config import Config, ConfigError
from mailtalk.constants import HDR_ACCOUNT, HDR_MAIL_ID, HDR_ONLINE
from mailtalk import dkim_claim, headers, notice, online_header, receiving
from mailtalk.timefmt import utcnow
from mailtalk_milter import libmilter_host

log = logging.getLogger("mailtalk.receiving_milter")

MILTER_NAME = "mailtalk-receiving"
NOQUEUE = "NOQUEUE"
_READ = {HDR_ACCOUNT.lower(), HDR_MAIL_ID.lower()}
_ONLINE = HDR_ONLINE.lower()
MAX_FIELDS = 2000              # header fields kept for the notice's MIME parsing


@dataclass
class Engine:
    loop: asyncio.AbstractEventLoop
    lookup: receiving.Lookup | None
    timeout: float
    notices: notice.NoticeTemplates | None = None    # None: header only
    dkim: dkim_claim.Policy | None = None             # None: claims need no DKIM


@dataclass
class _Message:
    queue_id: str = NOQUEUE
    recipients: list[str] = field(default_factory=list)
    claim_fields: list[bytes] = field(default_factory=list)
    forged: int = 0
    head: list[bytes] = field(default_factory=list)    # every field, for the notice's MIME
    body: list[bytes] = field(default_factory=list)


class ReceivingMilter(Milter.Base):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.msg = _Message()

    def _qid(self) -> str:
        qid = self.getsymval("i")
        if qid:
            self.msg.queue_id = qid
        return self.msg.queue_id

    @Milter.noreply
    @Milter.symlist("i")
    def envfrom(self, mailfrom: str, *params: str) -> int:
        self.msg = _Message()
        self._qid()
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, to: str, *params: str) -> int:
        self.msg.recipients.append(to.strip().removeprefix("<").removesuffix(">"))
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.decode("bytes")
    def header(self, name: str, value: bytes) -> int:
        lower = name.lower()
        if lower == _ONLINE:
            self.msg.forged += 1
            return Milter.CONTINUE
        line = name.encode("ascii", "replace") + b": " + headers.crlf_folds(value) + b"\r\n"
        if lower in _READ and len(self.msg.claim_fields) < 8:
            self.msg.claim_fields.append(line)
        if len(self.msg.head) < MAX_FIELDS:
            self.msg.head.append(line)
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        if self.engine.notices is not None and len(self.msg.recipients) == 1:
            self.msg.body.append(chunk)
        return Milter.CONTINUE

    @Milter.symlist("i")
    def eom(self) -> int:
        m = self.msg
        qid = self._qid()
        try:
            # libmilter counts copies from 1; deleting from the last keeps indexes valid.
            for index in range(m.forged, 0, -1):
                self.chgheader(HDR_ONLINE, index, "")
            if m.forged:
                log.info("%s: removed %d incoming %s", qid, m.forged, HDR_ONLINE)
        except Exception:
            log.exception("%s: could not delete incoming %s", qid, HDR_ONLINE)
            return Milter.CONTINUE
        try:
            h = self._decide(qid)
            if h.account is None:          # no usable claim: no header (receiving.NO_HEADER)
                return Milter.CONTINUE
            self.addheader(HDR_ONLINE, online_header.format_value(h))
        except Exception:
            log.exception("%s: internal error; the mail passes without %s", qid, HDR_ONLINE)
            return Milter.CONTINUE
        try:
            self._add_notice(qid, h)
        except Exception:
            log.exception("%s: the notice could not be added: header only", qid)
        return Milter.CONTINUE

    def _add_notice(self, qid: str, h: online_header.SenderOnline) -> None:
        """One recipient with a link: the notice in the text part (replacebody)."""
        m = self.msg
        if self.engine.notices is None or h.chat is None or h.account is None or not m.body:
            return
        head = b"".join(m.head) + b"\r\n"
        raw = head + b"".join(m.body)
        new = notice.add_notice(raw, notice.Notice(
            h.account, notice.display_name(raw), h.status, h.chat, self.engine.notices))
        if new is not None:
            self.replacebody(new[len(notice.split_header(new)[0]):])
            log.info("%s: notice added", qid)

    def _decide(self, qid: str) -> online_header.SenderOnline:
        m = self.msg
        claim = receiving.read_claim(m.claim_fields)
        if claim.problem is None and claim.account is not None:
            unsigned = dkim_claim.problem(m.head, claim.account, self.engine.dkim, qid)
            if unsigned is not None:
                claim = receiving.Claim(claim.account, None, unsigned)
        now = utcnow()
        if claim.problem is not None:
            log.info("%s: no %s (%s)", qid, HDR_ONLINE, claim.problem)
            return receiving.NO_HEADER
        if len(m.recipients) != 1:
            # One copy for all: a link would reach recipients it does not name.
            log.info("%s: %d recipients in one milter transaction: %s unknown",
                     qid, len(m.recipients), HDR_ONLINE)
            return online_header.unknown(claim.account, now)
        rcpt = m.recipients[0]
        h, why = self._run(receiving.decide(claim, [rcpt], self.engine.lookup, now, qid),
                           qid, rcpt, claim.account, now)
        log.info("%s: %s for %s: %s%s to %s", qid, HDR_ONLINE, claim.account or "-", h.state,
                 f" ({why})" if why else "", rcpt)
        return h

    def _run(self, coro: Any, qid: str, rcpt: str, account: str | None,
             now: datetime) -> tuple[online_header.SenderOnline, str]:
        """Run the decision on the asyncio loop from libmilter's thread. The lookup
        bounds itself; this wait only guards against a loop that is stuck or stopping."""
        future = asyncio.run_coroutine_threadsafe(coro, self.engine.loop)
        try:
            decided, why = future.result(self.engine.timeout + 1.0)
            return decided[rcpt], why
        except Exception as e:
            future.cancel()
            log.warning("%s: lookup did not finish (%s): unknown", qid, type(e).__name__)
            return online_header.unknown(account, now), "the event loop did not answer"

    def abort(self) -> int:
        self.msg = _Message()
        return Milter.CONTINUE

    def close(self) -> int:
        return Milter.CONTINUE


def install(engine: Engine) -> None:
    """Make libmilter (or TestCtx) create a ReceivingMilter per connection."""
    Milter.factory = lambda: ReceivingMilter(engine)


class Running:
    def __init__(self, host: libmilter_host.Host, lookup: Any, owns_lookup: bool) -> None:
        self._host, self._lookup, self._owns_lookup = host, lookup, owns_lookup

    async def close(self) -> None:
        await self._host.stop()
        if self._owns_lookup and self._lookup is not None:
            await self._lookup.close()
        log.info("receiving milter stopped")


async def start(cfg: Config, stop: asyncio.Event, *,
                lookup: receiving.Lookup | None = None) -> Running:
    """Serve the receiving milter on `[filter] milter_socket` (called by filter.start)."""
    from mailtalk_milter.filter import load_notices, make_lookup

    if cfg.has("milter"):
        raise ConfigError(f"{cfg.source}: [filter] mode = \"milter\" cannot run in one "
                          f"process with [milter] (libmilter serves one milter per "
                          f"process): give the receiving milter a config file of its own")
    fc = cfg.filter
    loop = asyncio.get_running_loop()
    owns = lookup is None
    if lookup is None:
        lookup = make_lookup(cfg)
    install(Engine(loop, lookup, fc.lookup_timeout, load_notices(cfg),
                   dkim_claim.Policy(fc.dkim, fc.authserv_id)))
    host = libmilter_host.serve(name=MILTER_NAME, spec=fc.milter_socket,
                                timeout=cfg.milter.timeout, socket_group=cfg.milter.socket_group,
                                stop=stop, where=f"{cfg.source}: [filter] milter_socket")
    log.info("receiving milter listening on %s", fc.milter_socket)
    return Running(host, lookup, owns)
