"""The receiving hook at final delivery (`[filter] mode = "lmtp"`): an LMTP server
between the MTA (Postfix's `lmtp:` transport, Sendmail's LMTP mailer) and the site's
own LMTP server (`[filter] lmtp_next`: Dovecot, Cyrus).

LMTP answers per recipient after DATA (RFC 2033), so every recipient gets its own
copy with its own link and its own reply, and the MTA retries only the recipients
that were deferred: no second trip through the queue, no record of partial deliveries.

- MAIL and RCPT are answered here (250); the next hop sees them at DATA, with the
  copy: a recipient it refuses at RCPT gets that refusal as its reply after DATA,
  which LMTP allows and MTAs treat as they would at RCPT.
- At DATA: one receiving decision for the mail (one lookup for all recipients), then
  one transaction per group of recipients with the same header, pipelined, over one
  connection to the next hop.
- Each recipient's reply is the next hop's reply for its copy, as it is (2xx, 4xx,
  5xx). Anything of ours (the next hop down or timing out, an error here) is a 4xx
  for the recipients it touched only. 250 means the next hop accepted that copy.
- Killed between the next hop's 250 and ours, the MTA retries recipients that were
  delivered: LMTP's own window, as for any LMTP server; a stop (SIGTERM) lets the
  mails in flight finish first (`filter.Running`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, AnyStr

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Session

from mailtalk import dkim_claim, metrics, receiving
from mailtalk.config import Config, FilterConfig
from mailtalk.config_values import UnixPath
from mailtalk.notice import NoticeTemplates
from mailtalk_milter import milter_socket
from mailtalk_milter.filter import Running, load_notices, make_lookup
from mailtalk_milter.filter_smtp import (OWN_SIZE_AFTER_DATA, REPLY_TEMPFAIL, REPLY_TOO_BIG, XFORWARD_ATTRS,
                                        FilterEnvelope, FilterSMTP, SmtpLimits)
from mailtalk_milter.lmtp_next import LmtpClient, ours
from mailtalk_milter.reinject import ReinjectError, ReinjectPool, Reply

log = logging.getLogger("mailtalk.lmtp")


class HookLMTP(LMTP, FilterSMTP):
    """aiosmtpd's LMTP with the content filter's server side (flood limits, the
    client's time budget, long lines, XFORWARD, 4xx for our own errors)."""

    async def push(self, status: AnyStr) -> None:
        raw = status.encode("ascii", "replace") if isinstance(status, str) else status
        n = len(self.envelope.rcpt_tos) if self.envelope is not None else 0
        if raw.startswith(OWN_SIZE_AFTER_DATA) and n > 1:
            await super().push(status)         # logged, and becomes REPLY_TOO_BIG
            for _ in range(n - 1):             # LMTP: one reply per recipient
                metrics.FILTER_DEFERRALS.labels("too_big").inc()
                await SMTP.push(self, REPLY_TOO_BIG)
            return
        await super().push(status)


class LmtpHookHandler:
    def __init__(self, cfg: FilterConfig, lookup: receiving.Lookup | None,
                 helo: str | None = None, notices: NoticeTemplates | None = None) -> None:
        self.cfg = cfg
        self.lookup = lookup
        self.notices = notices
        self.dkim = dkim_claim.Policy(cfg.dkim, cfg.authserv_id)
        self.helo = helo or socket.gethostname()
        self.pool = ReinjectPool("", 0, cfg.reinject_timeout, self.helo,
                                 cfg.reinject_idle_connections, cfg.reinject_idle_seconds,
                                 make=lambda: LmtpClient(cfg.lmtp_next, cfg.reinject_timeout,
                                                         self.helo))
        self.sessions: set[FilterSMTP] = set()
        self.busy = 0            # messages between DATA and our replies

    async def handle_EHLO(self, server: FilterSMTP, session: Session, envelope: Any,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return responses[:-1] + ["250-PIPELINING", "250-XFORWARD " + " ".join(XFORWARD_ATTRS),
                                 responses[-1]]

    async def handle_DATA(self, server: FilterSMTP, session: Session,
                          envelope: FilterEnvelope) -> str:
        rcpts = list(envelope.rcpt_tos)
        self.busy += 1
        try:
            replies = await self._data(envelope, rcpts)
        except Exception:
            log.exception("%s: error in the LMTP hook: %d recipient(s) deferred",
                          envelope.xforward.get("IDENT", "-"), len(rcpts))
            replies = {r: None for r in rcpts}
        finally:
            self.busy -= 1
        return "\r\n".join(REPLY_TEMPFAIL if replies.get(r) is None else replies[r].smtp()
                           for r in rcpts)

    async def _data(self, envelope: FilterEnvelope, rcpts: list[str]) -> dict[str, Reply | None]:
        prepared = await receiving.prepare(envelope.original_content or b"", rcpts, self.lookup,
                                           notices=self.notices, dkim=self.dkim,
                                           xforward_ident=envelope.xforward.get("IDENT"))
        out: dict[str, Reply | None] = {}
        client: LmtpClient | None = None
        reused = False
        try:
            for header, group in prepared.groups():
                message = prepared.message_with(header)
                for attempt in (1, 2):
                    if client is None or not client.connected:
                        client, reused = await self._client(prepared.qid, group, out)
                        if client is None:
                            break
                    replies = await client.deliver(envelope.mail_from or "",
                                                   envelope.mail_options, group, message)
                    # A pooled connection the server had closed: nothing was answered,
                    # nothing delivered; once more on a new one.
                    if attempt == 1 and reused and not client.answered:
                        client = None
                        continue
                    out.update(zip(group, replies))
                    reused = False
                    break
        finally:
            if client is not None:
                self.pool.put(client)
        _log(prepared, out)
        return out

    async def _client(self, qid: str, group: list[str],
                      out: dict[str, Reply | None]) -> tuple[LmtpClient | None, bool]:
        """(a connection to the next hop, whether the pool had it), or (None, False)
        with the group's replies set to ours."""
        try:
            client, reused = await self.pool.get()
        except ReinjectError as e:
            log.warning("%s: LMTP next hop %s: %s", qid, self.cfg.lmtp_next, e)
            out.update((r, ours(str(e))) for r in group)
            return None, False
        assert isinstance(client, LmtpClient)
        return client, reused

    async def aclose(self) -> None:
        await self.pool.close()


def _log(prepared: receiving.Prepared, out: dict[str, Reply | None]) -> None:
    """One line per mail; each recipient that was not delivered named with its reply."""
    delivered = sum(1 for r in out.values() if r is not None and r.ok)
    others = "; ".join(f"{rcpt}: {r}" for rcpt, r in out.items() if r is None or not r.ok)
    log.info("%s: %s; delivered to %d of %d%s", prepared.qid, prepared.summary, delivered,
             len(out), f"; not delivered: {others}" if others else "")


async def start(cfg: Config, stop: asyncio.Event, *, lookup: receiving.Lookup | None = None,
                limits: SmtpLimits | None = None) -> Running:
    """Listen for LMTP on `[filter] listen`: HOST:PORT, or a unix socket with mode 0660
    and the group `[filter] socket_group` (the MTA's delivery agent must reach it)."""
    fc = cfg.filter
    notices = load_notices(cfg)
    owns = lookup is None
    if owns:
        lookup = make_lookup(cfg)
    handler = LmtpHookHandler(fc, lookup, notices=notices)
    if logging.getLogger("mail.log").level == logging.NOTSET:
        logging.getLogger("mail.log").setLevel(logging.WARNING)   # aiosmtpd: a line per command
    loop = asyncio.get_running_loop()
    limits = limits or SmtpLimits()
    limiter = limits.limiter()

    def factory() -> HookLMTP:
        return HookLMTP(handler, data_size_limit=fc.max_message_size, enable_SMTPUTF8=True,
                        decode_data=False, hostname=handler.helo, ident="mailtalk lmtp",
                        loop=loop, limits=limits, limiter=limiter)

    listen = fc.listen
    if isinstance(listen, UnixPath):
        milter_socket.prepare(str(listen))         # its directory; asyncio removes a stale socket
        server = await loop.create_unix_server(factory, path=listen.path)
        milter_socket.tune(str(listen), set(), fc.socket_group)
    else:
        server = await loop.create_server(factory, host=listen.host, port=listen.port,
                                          reuse_address=True)
    log.info("LMTP hook listening on %s, delivering to %s", listen, fc.lmtp_next)
    return Running(server, handler, lookup, owns)
