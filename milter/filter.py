"""The after-queue content filter for Postfix (FILTER_README's "advanced" filter).

Postfix's `mailtalk` transport delivers to `[filter] listen` over SMTP; each message goes
back to Postfix's re-injection smtpd at `[filter] reinject` with X-Sender-Online added.

Nothing is lost and nothing bounces because of us:
- MAIL and RCPT are forwarded to the re-injection server live, so a recipient the next
  hop refuses gets that very reply (a 5xx from the next hop, not one of ours) at RCPT
  time, and every recipient that reaches DATA is known to be accepted.
- At DATA one transaction is sent per group of recipients with the same header (their
  links differ), and 250 is answered only when every group was accepted. A 4xx, a
  timeout, a broken connection or an exception of ours is a 4xx: Postfix keeps the mail
  and retries. Groups already delivered before such a failure are remembered (queue ID,
  recipient, digest of the message; on disk, `delivered.py`, so a restart of the filter
  forgets nothing) and skipped on the retry, so no one gets it twice.
- aiosmtpd's own exception reply would be a 500 (a bounce): `handle_exception` gives 451
  (`filter_smtp.py`, the SMTP side, as the 452 for a message over the size limit).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
from typing import Any

from aiosmtpd.smtp import Envelope, Session

from mailtalk.config import Config, ConfigError, FilterConfig
from mailtalk.lookup import PresenceLookup
from mailtalk.lookup_signing import SigningKeyError, load_or_create_signing_key
from mailtalk.notice import NoticeTemplates, default_templates
from mailtalk import dkim_claim, receiving
from mailtalk_milter.delivered import FILE_NAME as DELIVERED_FILE_NAME
from mailtalk_milter.delivered import DeliveredStore
from mailtalk_milter.filter_smtp import (REPLY_TEMPFAIL, XFORWARD_ATTRS, FilterEnvelope, FilterSMTP,
                                        SmtpLimits)
from mailtalk_milter.reinject import ReinjectClient, ReinjectError, ReinjectPool, Reply

log = logging.getLogger("mailtalk.filter")

REPLY_REINJECT_DOWN = "451 4.4.1 Error: re-injection unavailable; try again later"
DRAIN_SECONDS = 10.0           # on stop: how long messages in flight may finish


def _own(reply: Reply) -> str:
    """A next-hop reply for Postfix: 2xx/4xx/5xx pass as they are, anything else 451."""
    return reply.smtp() if 200 <= reply.code < 600 and reply.code // 100 != 3 else REPLY_TEMPFAIL


class FilterHandler:
    def __init__(self, cfg: FilterConfig, lookup: receiving.Lookup | None,
                 helo: str | None = None, delivered: DeliveredStore | None = None,
                 notices: NoticeTemplates | None = None) -> None:
        self.cfg = cfg
        self.lookup = lookup
        self.notices = notices     # None: header only, no visible notice
        self.dkim = dkim_claim.Policy(cfg.dkim, cfg.authserv_id)
        self.helo = helo or socket.gethostname()
        # Recipients re-injected before a deferral (None: in memory only).
        self.delivered = delivered if delivered is not None else DeliveredStore(None)
        self.pool = ReinjectPool(cfg.reinject.host, cfg.reinject.port, cfg.reinject_timeout,
                                 self.helo, cfg.reinject_idle_connections,
                                 cfg.reinject_idle_seconds)
        self.sessions: set[FilterSMTP] = set()
        self.busy = 0            # messages between DATA and our reply

    async def aclose(self) -> None:
        await self.pool.close()
        await self.delivered.close()

    async def handle_EHLO(self, server: FilterSMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        server.drop_upstream()                      # EHLO resets: a fresh transaction
        # PIPELINING (RFC 2920): Postfix then sends MAIL, RCPT... and DATA without
        # waiting for each reply; aiosmtpd reads and answers them in order.
        return responses[:-1] + ["250-PIPELINING", "250-XFORWARD " + " ".join(XFORWARD_ATTRS),
                                 responses[-1]]

    async def handle_RSET(self, server: FilterSMTP, session: Session,
                          envelope: Envelope) -> str:
        up = server.upstream
        if up is not None and up.in_transaction:   # else nothing to reset: no round trip
            try:
                await up.rset()
            except ReinjectError:
                server.drop_upstream()
        self._release(server)
        return "250 2.0.0 Ok"

    def _release(self, server: FilterSMTP) -> None:
        """Give the re-injection connection back to the pool between transactions.

        Postfix keeps idle sessions to us in its connection cache; had each kept its own
        re-injection connection, they would hold all of the re-injection smtpd's
        processes (maxproc 10) while new connections waited in its accept queue
        (measured: 5 to 9 waiting). Held only per transaction, a connection is made
        only when every held one is busy, which the 10 `mailtalk` transports bound."""
        up = server.upstream
        if up is not None and not up.in_transaction:
            server.upstream = None
            self.pool.put(up)

    async def handle_QUIT(self, server: FilterSMTP, session: Session,
                          envelope: Envelope) -> str:
        up, server.upstream = server.upstream, None
        if up is not None:
            if up.in_transaction:
                await up.close()      # a transaction open there: QUIT, not a hang-up
            else:
                self.pool.put(up)     # between transactions: the next session reuses it
        return "221 2.0.0 Bye"

    async def _upstream(self, server: FilterSMTP) -> ReinjectClient:
        if server.upstream is None or not server.upstream.connected:
            server.upstream, server.upstream_reused = await self.pool.get()
        return server.upstream

    async def handle_MAIL(self, server: FilterSMTP, session: Session, envelope: FilterEnvelope,
                          address: str, mail_options: list[str]) -> str:
        ident = envelope.xforward.get("IDENT", "-")
        for attempt in (1, 2):     # a cached connection may have timed out: reconnect once
            try:
                up = await self._upstream(server)
                refused, reply = await up.begin(envelope.xforward, address, mail_options)
                if attempt == 1 and server.upstream_reused and 421 in (
                        reply.code, refused.code if refused else 0):
                    raise ReinjectError(f"pooled connection closing: {reply}")
                if refused is not None:
                    log.warning("%s: XFORWARD refused by the re-injection server: %s",
                                ident, refused)
                break
            except ReinjectError as e:
                server.drop_upstream()
                if attempt == 2:
                    log.warning("%s: MAIL FROM <%s>: %s: deferred", ident, address, e)
                    return REPLY_REINJECT_DOWN
        if reply.ok:
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
            return "250 2.1.0 Ok"
        log.info("%s: MAIL FROM <%s> refused by the re-injection server: %s", ident, address, reply)
        return _own(reply)

    async def handle_RCPT(self, server: FilterSMTP, session: Session, envelope: FilterEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        ident = envelope.xforward.get("IDENT", "-")
        if server.upstream is None:
            return REPLY_REINJECT_DOWN
        try:
            reply = await server.upstream.rcpt(address)
        except ReinjectError as e:
            server.drop_upstream()
            log.warning("%s: RCPT TO <%s>: %s: deferred", ident, address, e)
            return REPLY_REINJECT_DOWN
        if reply.ok:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            return "250 2.1.5 Ok"
        log.info("%s: RCPT TO <%s> refused by the re-injection server: %s", ident, address, reply)
        return _own(reply)

    async def handle_DATA(self, server: FilterSMTP, session: Session,
                          envelope: FilterEnvelope) -> str:
        self.busy += 1
        try:
            reply = await self._data(server, envelope)
            self._release(server)
            return reply
        except asyncio.CancelledError:      # Postfix went away: the transaction is void
            server.drop_upstream()
            raise
        except Exception:
            log.exception("%s: error in the filter: deferred",
                          envelope.xforward.get("IDENT", "-"))
            server.drop_upstream()
            return REPLY_TEMPFAIL
        finally:
            self.busy -= 1

    async def _data(self, server: FilterSMTP, envelope: FilterEnvelope) -> str:
        up = server.upstream
        if up is None:                    # lost at RCPT time: nothing to deliver to
            return REPLY_REINJECT_DOWN
        raw = envelope.original_content or b""
        prepared = await receiving.prepare(raw, envelope.rcpt_tos, self.lookup,
                                           notices=self.notices, dkim=self.dkim,
                                           xforward_ident=envelope.xforward.get("IDENT"))
        qid = prepared.qid
        done: set[str] = set()
        if qid != "-" and self.delivered.may_have(qid):   # rare: a retry after a partial delivery
            done = await self.delivered.delivered(qid, hashlib.sha256(raw).digest(),
                                                  envelope.rcpt_tos)
            log.info("%s: %d recipient(s) re-injected on an earlier try: skipped", qid, len(done))
        groups = [(h, [r for r in rs if r not in done]) for h, rs in prepared.groups()]
        groups = [(h, rs) for h, rs in groups if rs]
        try:
            if len(groups) == 1 and not done:
                # The usual case: the live transaction carries every recipient.
                reply = await up.data(prepared.message_with(groups[0][0]))
                log.info("%s: %s; re-injected: %s", qid, prepared.summary, reply)
                return _own(reply)
            log.info("%s: %s", qid, prepared.summary)
            return await self._per_group(up, envelope, prepared, groups, done,
                                         hashlib.sha256(raw).digest())
        except ReinjectError as e:
            server.drop_upstream()
            log.warning("%s: %s; re-injection failed: %s: deferred", qid, prepared.summary, e)
            return REPLY_REINJECT_DOWN

    async def _per_group(self, up: ReinjectClient, envelope: FilterEnvelope,
                         prepared: receiving.Prepared, groups: list[tuple[bytes, list[str]]],
                         done: set[str], digest: bytes) -> str:
        """One transaction per group of recipients with the same header (their links
        differ). 250 only when every group was accepted; a deferral after some groups
        were re-injected records them first, so that the retry skips them."""
        qid = prepared.qid
        sent: list[str] = []              # re-injected in this try
        all_sent = False
        try:
            await up.rset()
            for n, (header, rcpts) in enumerate(groups):
                reply = await self._one_transaction(up, envelope, rcpts,
                                                    prepared.message_with(header))
                if not reply.ok:
                    log.warning("%s: group %d/%d (%s) refused: %s", qid, n + 1,
                                len(groups), ", ".join(rcpts), reply)
                    if n == 0 and not done and reply.code >= 500:
                        return _own(reply)     # nothing delivered: the next hop's own 5xx
                    return REPLY_TEMPFAIL if reply.code >= 500 else _own(reply)
                sent.extend(rcpts)
                log.info("%s: re-injected to %s: %s", qid, ", ".join(rcpts), reply)
            all_sent = True
            return "250 2.0.0 Ok: re-injected"
        finally:
            # Deferred (a refusal, an error, Postfix gone) after some recipients were
            # re-injected: remember them before Postfix hears the 4xx. Those of an
            # earlier try again too, so that they live as long as the retries go on.
            if not all_sent and (sent or done) and qid != "-":
                await self.delivered.record(qid, digest, [*done, *sent])

    @staticmethod
    async def _one_transaction(up: ReinjectClient, envelope: FilterEnvelope,
                               rcpts: list[str], message: bytes) -> Reply:
        _, reply = await up.begin(envelope.xforward, envelope.mail_from or "",
                                  envelope.mail_options)
        if not reply.ok:
            return reply
        for r in rcpts:
            reply = await up.rcpt(r)
            if not reply.ok:
                await up.rset()
                return reply
        return await up.data(message)


class Running:
    """A listening filter or LMTP hook, and how it stops."""

    def __init__(self, server: asyncio.AbstractServer, handler: Any,
                 lookup: Any, owns_lookup: bool) -> None:
        self.server, self.handler = server, handler
        self._lookup, self._owns_lookup = lookup, owns_lookup

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening, let messages in flight finish (bounded), then hang up."""
        self.server.close()
        deadline = time.monotonic() + DRAIN_SECONDS
        while self.handler.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for s in list(self.handler.sessions):
            if s.transport is not None:
                s.transport.close()
            s.drop_upstream()
        await self.server.wait_closed()
        await self.handler.aclose()
        if self._owns_lookup and self._lookup is not None:
            await self._lookup.close()
        log.info("filter stopped")


def load_notices(cfg: Config) -> NoticeTemplates | None:
    """The notice's wording (`[filter] notice_*_template`, else the built-in), or None
    with `[filter] notice = false`. A template that does not load stops start-up."""
    fc = cfg.filter
    if not fc.notice:
        return None
    try:
        if fc.notice_text_template is None and fc.notice_html_template is None:
            return default_templates()
        return NoticeTemplates.load(fc.notice_text_template, fc.notice_html_template)
    except ValueError as e:
        raise ConfigError(f"{cfg.source}: [filter] notice_*_template: {e}") from None


def make_lookup(cfg: Config) -> Any:
    """The real presence lookup, signing with this site's key; a key that cannot be
    read or made stops start-up (without it no link would ever reach our recipients)."""
    try:
        key = load_or_create_signing_key(cfg.site.signing_key_file)
    except SigningKeyError as e:
        raise ConfigError(f"{cfg.source}: [site] signing_key_file: {e}") from None
    return PresenceLookup(cfg, signing_key=key)


async def start(cfg: Config, stop: asyncio.Event, *,
                lookup: receiving.Lookup | None = None, limits: SmtpLimits | None = None
                ) -> Any:
    """Listen on `[filter] listen`; `lookup` and `limits` are for tests (default: the
    real lookup, the default connection limits: filter_smtp.SmtpLimits).

    With `[filter] mode = "milter"` the receiving milter runs instead (Sendmail), with
    `"lmtp"` the LMTP hook (`lmtp_hook.py`)."""
    fc = cfg.filter
    if fc.mode == "milter":
        from mailtalk_milter import receiving_milter
        return await receiving_milter.start(cfg, stop, lookup=lookup)
    if fc.mode == "lmtp":
        from mailtalk_milter import lmtp_hook
        return await lmtp_hook.start(cfg, stop, lookup=lookup, limits=limits)
    notices = load_notices(cfg)
    owns = lookup is None
    if owns:
        lookup = make_lookup(cfg)
    delivered = DeliveredStore(cfg.site.state_dir / DELIVERED_FILE_NAME)
    await delivered.open()
    handler = FilterHandler(fc, lookup, delivered=delivered, notices=notices)
    if logging.getLogger("mail.log").level == logging.NOTSET:
        logging.getLogger("mail.log").setLevel(logging.WARNING)   # aiosmtpd: a line per command
    loop = asyncio.get_running_loop()
    limits = limits or SmtpLimits()
    limiter = limits.limiter()

    def factory() -> FilterSMTP:
        return FilterSMTP(handler, data_size_limit=fc.max_message_size, enable_SMTPUTF8=True,
                          decode_data=False, hostname=handler.helo,
                          ident="mailtalk filter", loop=loop, limits=limits, limiter=limiter)

    try:
        server = await loop.create_server(factory, host=fc.listen.host, port=fc.listen.port,
                                          reuse_address=True)
    except BaseException:
        await delivered.close()
        raise
    running = Running(server, handler, lookup, owns)
    log.info("filter listening on %s:%d, re-injecting to %s", fc.listen.host, running.port,
             fc.reinject)
    return running
