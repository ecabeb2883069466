"""The content filter's SMTP server side: aiosmtpd's SMTP with what Postfix's smtp
client needs from a content filter, and less work per mail.

- XFORWARD (XFORWARD_README): the original client's attributes, passed on to the
  re-injection.
- Never a 5xx of our own: an exception is 451, a message over `[filter]
  max_message_size` is 452 (aiosmtpd's 552 would bounce mail Postfix already took).
- DATA is sent to the re-injection server as soon as Postfix sends its DATA.
- Replies to pipelined commands go out together (RFC 2920 lets a server buffer
  them): Postfix sends XFORWARD, MAIL, RCPT and DATA in one packet, and one write
  instead of four saves three send() calls and as many wake-ups of Postfix's smtp.
- Plain `<local@domain>` addresses are parsed without the `email` package's
  general RFC 5322 parser, which aiosmtpd uses for every MAIL and RCPT.

The per-session state kept here (the re-injection connection of the current
transaction) is driven by `filter.FilterHandler`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, AnyStr, Protocol

from aiosmtpd.smtp import SMTP, Envelope

from mailtalk_milter.reinject import ReinjectClient, Reply

log = logging.getLogger("mailtalk.filter")

XFORWARD_ATTRS = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
REPLY_TEMPFAIL = "451 4.3.0 Error: mailtalk filter failed; try again later"
# aiosmtpd refuses a message over data_size_limit with 552 (a bounce). Postfix already
# accepted that mail, so a size limit of ours must defer it, never bounce it.
REPLY_TOO_BIG = "452 4.3.4 Error: message larger than [filter] max_message_size; try again later"
# Replies that end a pipelined group (RFC 2920): the client waits for them, so they are
# never held back, whatever is in the input buffer.
_NEVER_HELD = (b"354", b"221")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(
    rf"[ \t]*<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>((?:[ \t]*[^( \t].*)?)", re.S)


class Sessions(Protocol):
    sessions: set[Any]


class FilterEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.xforward: dict[str, str] = {}


class FilterSMTP(SMTP):
    """aiosmtpd's SMTP plus XFORWARD, one re-injection connection, and 451 on errors."""

    def __init__(self, handler: Sessions, **kw: Any) -> None:
        # A line may be as long as the whole message: long lines must pass, and an
        # aiosmtpd "500 Line too long" would be a 5xx of our own making.
        self.line_length_limit = max(kw.get("data_size_limit") or 0, 1001)
        super().__init__(handler, **kw)
        self.upstream: ReinjectClient | None = None
        self.upstream_reused = False     # taken from the pool: may have gone stale
        self.early_data: asyncio.Task[Reply] | None = None   # DATA sent on ahead, see smtp_DATA
        self._held: list[bytes] = []     # replies not yet written (see push)
        handler.sessions.add(self)

    def _create_envelope(self) -> FilterEnvelope:
        return FilterEnvelope()

    def _next_command_waiting(self) -> bool:
        """A whole command line is already in the input buffer (the client pipelines)."""
        buffer = getattr(self._reader, "_buffer", None)   # aiosmtpd reads it too
        return buffer is not None and b"\n" in buffer

    async def push(self, status: AnyStr) -> None:
        # aiosmtpd's push writes at once; this one may hold the reply (see below), so it
        # encodes as aiosmtpd does and writes itself.
        if isinstance(status, str):
            response = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        else:
            response = bytes(status)
        if response.startswith(b"552 "):      # aiosmtpd's own size refusals, at MAIL or DATA
            env = self.envelope
            ident = env.xforward.get("IDENT", "-") if isinstance(env, FilterEnvelope) else "-"
            log.error("%s: message over [filter] max_message_size (%d bytes): deferred; "
                      "keep it at least Postfix's message_size_limit", ident,
                      self.data_size_limit or 0)
            response = REPLY_TOO_BIG.encode()
        self._held.append(response + b"\r\n")
        if self._next_command_waiting() and not response.startswith(_NEVER_HELD):
            return                       # written with the reply to a later command
        data = b"".join(self._held)
        self._held.clear()
        self._writer.write(data)
        await self._writer.drain()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd's parser gives the same answer for these; anything else still goes
        # to it (quoted local parts, source routes, address literals, UTF-8, <>).
        m = _PLAIN_ADDRESS.fullmatch(arg)
        if m is None:
            return super()._getaddr(arg)
        address = m.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, m.group(2).lstrip(" \t")

    async def smtp_DATA(self, arg: str | None) -> None:
        """For a single recipient, send DATA to the re-injection server as soon as Postfix
        sends its DATA: its 354 round trip then overlaps reading the message and the
        lookup (one round trip less per mail). The 354 is consumed in FilterHandler._data;
        if aiosmtpd never calls it (no RCPT, too big, hang-up) the connection is dropped,
        as a transaction in the DATA phase cannot be taken back."""
        up, env = self.upstream, self.envelope
        if (up is not None and up.in_transaction and arg is None
                and len(set(env.rcpt_tos)) == 1):
            self.early_data = asyncio.ensure_future(up.command(b"DATA"))
        try:
            await super().smtp_DATA(arg)
        finally:
            task, self.early_data = self.early_data, None
            if task is not None:              # not consumed by handle_DATA
                self.drop_upstream()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

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
        self.drop_upstream()
        self.event_handler.sessions.discard(self)
        super().connection_lost(error)
