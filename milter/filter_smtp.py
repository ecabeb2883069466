"""The content filter's SMTP server side: aiosmtpd's SMTP with what Postfix's smtp
client needs from a content filter.

- XFORWARD (XFORWARD_README): the original client's attributes, passed on to the
  re-injection.
- Never a 5xx of our own: an exception is 451, and aiosmtpd's own refusal of a
  message over `[filter] max_message_size` (552, a bounce) becomes 452: Postfix
  already accepted that mail. A next hop's 552 passes as it is (the handler's reply).
- Lines as long as the message: long lines must pass, and aiosmtpd's
  "500 Line too long" would be a 5xx of our own making.
- Plain `<local@domain>` addresses are parsed by one regular expression instead of
  the `email` package's general RFC 5322 parser that aiosmtpd uses for every MAIL and
  RCPT: 229 µs against 0.6 µs per address on the benchmark machine (two per mail);
  without it, filter CPU per mail rose from 1.01-1.14 ms to 1.50 ms with no lookup
  (bench/filter_bench.py, paired runs, docs/benchmarks.md). Anything else still goes
  to aiosmtpd's parser; a unit test checks that both agree.

- Connections under a flood: `SmtpLimits`. A connection over the cap per
  client address or in all (`mailtalk.connlimit`) gets a 421 at once, before anything
  of it is read (Postfix defers and retries). The client has `client_timeout` seconds of
  its own time per transaction, plus one second per `min_data_rate` bytes it sent (as
  Postfix's smtpd_per_request_deadline and smtpd_min_data_rate): a client that sends
  nothing, a byte a second or NOOPs is dropped; our own time (the handler's hooks:
  lookups, re-injection) never counts, so a legitimate session is not cut while we
  work. A dropped session is no loss: the mail stays in Postfix's queue (4xx).
  aiosmtpd's own `timeout` (reset by every command, not by data, and running while our
  hooks work) is replaced by this budget.

The per-session state kept here (the re-injection connection of the current
transaction) is driven by `filter.FilterHandler`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any, AnyStr, Protocol

from aiosmtpd.smtp import SMTP, Envelope

from mailtalk import defaults as D, metrics
from mailtalk.connlimit import LOOPBACK, ConnLimiter, Network, total_within_fd_limit
from mailtalk_milter.reinject import ReinjectClient

log = logging.getLogger("mailtalk.filter")

XFORWARD_ATTRS = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
REPLY_TEMPFAIL = "451 4.3.0 Error: mailtalk filter failed; try again later"
REPLY_TOO_MANY = b"421 4.7.0 Error: too many connections; try again later\r\n"
FD_SHARE = 8      # the filter takes at most 1/8 of the open-file limit (2 per session)
REPLY_TOO_BIG = "452 4.3.4 Error: message larger than [filter] max_message_size; try again later"
# aiosmtpd's own size refusals (at MAIL with SIZE=, and after DATA): only these
# become REPLY_TOO_BIG. Next hops answer with enhanced status codes ("552 5.3.4").
# A line longer than line_length_limit (= max_message_size) is a message over it too.
OWN_SIZE_AFTER_DATA = (b"552 Error: Too much mail data", b"500 Line too long")
_OWN_SIZE_REFUSALS = (b"552 Error: message size exceeds", *OWN_SIZE_AFTER_DATA)
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(
    rf"[ \t]*<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>((?:[ \t]*[^( \t].*)?)",
    re.S)


_DEFERRALS = (("451 4.4.1", "next_hop_down"), ("451 4.3.0", "our_error"),
              ("452 4.3.4", "too_big"), ("451 4.4.2", "next_hop_down"), ("4", "next_hop"))


def _count_deferral(status: AnyStr) -> None:
    """Every 4xx the hook answers, by what it means (mailtalk.metrics)."""
    text = status.decode("ascii", "replace") if isinstance(status, bytes) else status
    if text.startswith("4") and not text.startswith("421"):  # 421: the session's end
        metrics.FILTER_DEFERRALS.labels(next(r for p, r in _DEFERRALS
                                             if text.startswith(p))).inc()


class Sessions(Protocol):
    sessions: set[Any]


@dataclass(frozen=True)
class SmtpLimits:
    per_address: int = D.FILTER_MAX_CONNECTIONS_PER_CLIENT
    total: int = D.FILTER_MAX_CONNECTIONS
    client_timeout: float = D.FILTER_CLIENT_TIMEOUT
    min_data_rate: float = D.FILTER_MIN_DATA_RATE
    exempt: tuple[Network, ...] = LOOPBACK       # Postfix on this host: the total only

    def limiter(self) -> ConnLimiter:
        return ConnLimiter(self.per_address, total_within_fd_limit(self.total, FD_SHARE),
                           self.exempt, name="filter", logger=log)


class FilterEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.xforward: dict[str, str] = {}


class FilterSMTP(SMTP):
    """aiosmtpd's SMTP plus XFORWARD, one re-injection connection, and 4xx on errors."""

    def __init__(self, handler: Sessions, *, limits: SmtpLimits | None = None,
                 limiter: ConnLimiter | None = None, **kw: Any) -> None:
        self.line_length_limit = max(kw.get("data_size_limit") or 0, 1001)
        self.limits = limits or SmtpLimits()
        super().__init__(handler, timeout=self.limits.client_timeout, **kw)
        self.upstream: ReinjectClient | None = None
        self.upstream_reused = False     # taken from the pool: may have gone stale
        self.limiter = limiter
        self._ticket: str | None = None
        self._refused = False
        # The client's budget (see the module's docstring), since connect or the last DATA.
        self._since = self.loop.time()
        self._received = 0               # bytes it sent since then
        self._ours = 0.0                 # seconds our hooks took since then
        self._hook_since: float | None = None
        handler.sessions.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.limiter is not None:
            self._ticket = self.limiter.admit(transport.get_extra_info("peername"))
            if self._ticket is None:
                self._refused = True
                self.event_handler.sessions.discard(self)
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(REPLY_TOO_MANY)
                metrics.FILTER_DEFERRALS.labels("too_many_connections").inc()
                transport.close()
                return
        self._since = self.loop.time()
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd calls this at the start and after every command; one timer checks
        # the budget instead, and re-arms itself until the budget is spent.
        if self._timeout_handle is None:
            self._timeout_handle = self.loop.call_later(self._timeout_duration,
                                                        self._timeout_cb)

    def _deadline(self) -> float:
        return (self._since + self._ours + self._timeout_duration
                + self._received / self.limits.min_data_rate)

    def _timeout_cb(self) -> None:
        now = self.loop.time()
        # While a hook works it is our time: look again later.
        due = now + self._timeout_duration if self._hook_since is not None else self._deadline()
        if now < due:
            self._timeout_handle = self.loop.call_at(due, self._timeout_cb)
            return
        log.info("%s: closing a slow or idle connection: %d bytes in %.0f s of its time",
                 self.session.peer if self.session else "?", self._received,
                 now - self._since - self._ours)
        super()._timeout_cb()

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        self._hook_since = start = self.loop.time()
        try:
            return await super()._call_handler_hook(command, *args)
        finally:
            now = self.loop.time()
            self._ours += now - start
            self._hook_since = None
            if command == "DATA":        # a transaction done: a new budget
                self._since, self._received, self._ours = now, 0, 0.0

    def _create_envelope(self) -> FilterEnvelope:
        return FilterEnvelope()

    async def push(self, status: AnyStr) -> None:
        response = status.encode("ascii", "replace") if isinstance(status, str) else status
        if response.startswith(_OWN_SIZE_REFUSALS):
            env = self.envelope
            ident = env.xforward.get("IDENT", "-") if isinstance(env, FilterEnvelope) else "-"
            log.error("%s: message over [filter] max_message_size (%d bytes): deferred; "
                      "keep it at least Postfix's message_size_limit", ident,
                      self.data_size_limit or 0)
            status = REPLY_TOO_BIG
        _count_deferral(status)
        await super().push(status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        m = _PLAIN_ADDRESS.fullmatch(arg)
        if m is None:             # quoted local parts, source routes, literals, UTF-8, <>
            return super()._getaddr(arg)
        address = m.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, m.group(2).lstrip(" \t")

    async def smtp_XFORWARD(self, arg: str | None) -> None:
        """Postfix's XFORWARD (XFORWARD_README): client attributes, before MAIL."""
        env = self.envelope
        assert isinstance(env, FilterEnvelope)
        if env.mail_from:
            await self.push("503 5.5.1 Error: MAIL transaction in progress")
            return
        if not arg:
            await self.push("501 5.5.4 Syntax: XFORWARD attribute=value...")
            return
        attrs: dict[str, str] = {}
        for item in arg.split():
            name, sep, value = item.partition("=")
            if not sep or name.upper() not in XFORWARD_ATTRS:
                await self.push(f"501 5.5.4 Bad XFORWARD attribute name: {name[:40]}")
                return
            attrs[name.upper()] = value
        env.xforward.update(attrs)
        await self.push("250 2.0.0 Ok")

    async def handle_exception(self, error: Exception) -> str:
        log.error("unexpected error in the SMTP session: %s: %s",
                  type(error).__name__, error, exc_info=error)
        self.drop_upstream()
        self._set_rset_state()
        return REPLY_TEMPFAIL

    def drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._ticket is not None and self.limiter is not None:
            self.limiter.release(self._ticket)
            self._ticket = None
        self.drop_upstream()
        self.event_handler.sessions.discard(self)
        super().connection_lost(error)
