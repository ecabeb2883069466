"""The re-injection client: hands a filtered message back to Postfix (`[filter] reinject`).

A small SMTP client on asyncio streams rather than aiosmtplib: aiosmtplib rewrites
bare CR and LF in the message data to CRLF, which would change the bytes that must
pass unchanged (DKIM). Here the data goes out exactly as given, only dot-stuffed.
Every reply is returned as a value (code and lines), so the filter can hand a
recipient's own 5xx back to Postfix; a timeout or a broken connection raises
`ReinjectError`, which the filter turns into a 4xx.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

log = logging.getLogger("mailtalk.filter.reinject")

REPLY_MAX_LINES = 100          # a reply longer than this is a broken peer
REPLY_LINE_MAX = 4096
XFORWARD_LINE_MAX = 500        # below RFC 5321's 512 octets with CRLF
_STUFF = re.compile(rb"(?m)^\.")   # a dot after every LF, as the receiver splits lines there
_XTEXT_SAFE = re.compile(r"[!-~]+")


def stuffed(message: bytes) -> bytes:
    """The message as DATA sends it: dot-stuffed, ending in CRLF and the final dot."""
    body = _STUFF.sub(b"..", message)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


class ReinjectError(Exception):
    """The re-injection server is unreachable, timed out, or broke the protocol."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    def smtp(self) -> str:
        """The reply as SMTP lines for aiosmtpd's push() (CRLF between lines)."""
        lines = self.lines or ("",)
        out = [f"{self.code}-{t}" for t in lines[:-1]] + [f"{self.code} {lines[-1]}"]
        return "\r\n".join(x.rstrip() for x in out)

    def __str__(self) -> str:
        return f"{self.code} {' / '.join(self.lines)}"


def _printable(b: bytes) -> str:
    text = b.decode("utf-8", errors="replace")
    if text.isascii() and text.isprintable():      # every reply Postfix gives
        return text
    return re.sub(r"[^\x20-\x7e]", "?", text)


class ReinjectClient:
    """One SMTP connection to the re-injection server; several transactions may use it."""

    def __init__(self, host: str, port: int, timeout: float, helo: str) -> None:
        self.host, self.port, self.timeout, self.helo = host, port, timeout, helo
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.extensions: dict[str, str] = {}     # EHLO keyword -> its parameters
        # A MAIL was accepted and no DATA reply or RSET has ended it yet: only then does
        # a client's RSET need a round trip here (Postfix sends one before every reuse).
        self.in_transaction = False

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    HELLO = b"EHLO"              # LHLO for an LMTP server (lmtp_next.py)

    def _open(self) -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        return asyncio.open_connection(self.host, self.port, limit=REPLY_LINE_MAX * 2)

    def where(self) -> str:
        return f"{self.host}:{self.port}"

    async def connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(self._open(), self.timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise ReinjectError(f"cannot connect to {self.where()}: {e or 'timeout'}") from None
        greeting = await self._read_reply()
        if greeting.code != 220:
            await self.close()
            raise ReinjectError(f"greeting {greeting}")
        reply = await self.command(self.HELLO + b" " + self.helo.encode("ascii"))
        if not reply.ok:
            await self.close()
            raise ReinjectError(f"{self.HELLO.decode()} refused: {reply}")
        self.extensions = {}
        for line in reply.lines[1:]:
            keyword, _, params = line.partition(" ")
            self.extensions[keyword.upper()] = params.upper()

    async def _read_reply(self) -> Reply:
        # asyncio.timeout, not wait_for: wait_for makes a task per line (Python 3.11).
        if self._reader is None:          # aborted meanwhile (a stop, an error)
            raise ReinjectError("connection closed")
        lines: list[str] = []
        code = 0
        try:
            async with asyncio.timeout(self.timeout):
                while len(lines) < REPLY_MAX_LINES:
                    raw = await self._reader.readline()
                    if not raw.endswith(b"\n"):
                        raise ReinjectError("connection closed by the server")
                    if (len(raw) < 4 or not raw[:3].isdigit()
                            or raw[3:4] not in (b" ", b"-", b"\r", b"\n")):
                        raise ReinjectError(f"malformed reply line {_printable(raw[:80])!r}")
                    code = int(raw[:3])
                    lines.append(_printable(raw[4:].rstrip(b"\r\n")))
                    if raw[3:4] != b"-":
                        return Reply(code, tuple(lines))
        except TimeoutError:
            raise ReinjectError(f"no reply within {self.timeout:g}s") from None
        except (OSError, asyncio.LimitOverrunError, ValueError) as e:
            raise ReinjectError(f"reading a reply: {e}") from None
        raise ReinjectError("reply too long")

    async def _send(self, data: bytes) -> None:
        if not self.connected:
            raise ReinjectError("not connected")
        assert self._writer is not None
        try:
            self._writer.write(data)
            if self._writer.transport.get_write_buffer_size():   # else drain() is a no-op
                async with asyncio.timeout(self.timeout):
                    await self._writer.drain()
        except TimeoutError:
            raise ReinjectError(f"cannot send within {self.timeout:g}s") from None
        except OSError as e:
            raise ReinjectError(f"sending: {e}") from None

    async def command(self, line: bytes) -> Reply:
        if b"\r" in line or b"\n" in line:
            raise ValueError("CR or LF in an SMTP command")
        await self._send(line + b"\r\n")
        return await self._read_reply()

    def _xforward_lines(self, attrs: dict[str, str]) -> list[bytes]:
        """Postfix's XFORWARD attributes the server accepts, in as few command lines
        as fit RFC 5321's 512-octet limit (one, usually)."""
        offered = set(self.extensions.get("XFORWARD", "").split())
        items = [f"{k}={v}" for k, v in attrs.items()
                 if k in offered and _XTEXT_SAFE.fullmatch(v)]
        lines: list[str] = []
        for item in items:
            if lines and len(lines[-1]) + 1 + len(item) <= XFORWARD_LINE_MAX:
                lines[-1] += " " + item
            else:
                lines.append("XFORWARD " + item)
        return [x.encode("ascii") for x in lines]

    async def begin(self, xforward: dict[str, str], sender: str,
                    options: Iterable[str]) -> tuple[Reply | None, Reply]:
        """XFORWARD (if any) and MAIL FROM, pipelined when the server offers it (one
        round trip). Returns (the first refused XFORWARD reply or None, MAIL's reply)."""
        lines = self._xforward_lines(xforward) + [self._mail_line(sender, options)]
        if "PIPELINING" in self.extensions:
            await self._send(b"".join(line + b"\r\n" for line in lines))
            replies = [await self._read_reply() for _ in lines]
        else:
            replies = [await self.command(line) for line in lines]
        refused = next((r for r in replies[:-1] if not r.ok), None)
        self.in_transaction = replies[-1].ok
        return refused, replies[-1]

    def _mail_line(self, sender: str, options: Iterable[str]) -> bytes:
        opts = [o for o in options if self._offers_option(o)]
        # aiosmtpd gives the null sender (bounces, auto-replies) as "<>": it must go on
        # as MAIL FROM:<>, which strict servers (Dovecot's LMTP) insist on.
        sender = "" if sender == "<>" else sender
        line = f"MAIL FROM:<{sender}>" + "".join(" " + o for o in opts)
        line_b = line.encode("utf-8", errors="surrogateescape")
        if b"\r" in line_b or b"\n" in line_b:
            raise ValueError("CR or LF in an SMTP command")
        return line_b

    def _offers_option(self, option: str) -> bool:
        key = option.split("=", 1)[0].upper()
        return {"BODY": "8BITMIME", "SMTPUTF8": "SMTPUTF8", "SIZE": "SIZE"}.get(key, "") in self.extensions

    async def rcpt(self, recipient: str) -> Reply:
        return await self.command(f"RCPT TO:<{recipient}>".encode("utf-8", errors="surrogateescape"))

    async def data(self, message: bytes) -> Reply:
        """DATA, the message dot-stuffed and otherwise unchanged, then the final dot."""
        reply = await self.command(b"DATA")
        if reply.code != 354:
            return reply
        await self._send(stuffed(message))
        reply = await self._read_reply()
        self.in_transaction = False
        return reply

    async def rset(self) -> Reply:
        reply = await self.command(b"RSET")
        self.in_transaction = False
        return reply

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        try:
            if not writer.is_closing():
                writer.write(b"QUIT\r\n")
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (OSError, asyncio.TimeoutError):
            pass

    def abort(self) -> None:
        """Drop the connection now (after an error: the transaction there is void)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.transport.abort()

    def quit_nowait(self) -> None:
        """QUIT and close without waiting for the reply (an idle pooled connection)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None and not writer.is_closing():
            writer.write(b"QUIT\r\n")
            writer.close()

    def idle_ok(self) -> bool:
        """Connected, and nothing arrived while idle (a 421 or EOF means it is stale)."""
        return (self.connected and not self.in_transaction and self._reader is not None
                and not self._reader.at_eof()
                and not self._reader._buffer)    # noqa: SLF001 - no public peek


class ReinjectPool:
    """Idle re-injection connections, reused across Postfix sessions (newest first).

    A fresh connection costs the re-injection smtpd a process's session set-up, its
    greeting and our EHLO; an idle one holds that process from anyone else. So at most
    `max_idle` (`[filter] reinject_idle_connections`), each for `idle_seconds`; a
    timer closes them."""

    def __init__(self, host: str, port: int, timeout: float, helo: str,
                 max_idle: int, idle_seconds: float,
                 make: Callable[[], ReinjectClient] | None = None) -> None:
        self.host, self.port, self.timeout, self.helo = host, port, timeout, helo
        self._make = make or (lambda: ReinjectClient(host, port, timeout, helo))
        self.max_idle, self.idle_seconds = max_idle, idle_seconds
        self._idle: list[tuple[float, ReinjectClient]] = []
        self._timer: asyncio.TimerHandle | None = None

    async def get(self) -> tuple[ReinjectClient, bool]:
        """A connection in the EHLO'd state, and whether it was reused from the pool."""
        self._prune()
        while self._idle:
            _, client = self._idle.pop()
            if client.idle_ok():
                return client, True
            client.abort()
        client = self._make()
        await client.connect()
        return client, False

    def put(self, client: ReinjectClient) -> None:
        """Keep a connection that is between transactions, or QUIT it if the pool is full."""
        self._prune()
        if client.idle_ok() and len(self._idle) < self.max_idle:
            self._idle.append((time.monotonic(), client))
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(
                    self.idle_seconds, self._on_timer)
        else:
            client.quit_nowait()

    def _prune(self) -> None:
        cutoff = time.monotonic() - self.idle_seconds
        while self._idle and self._idle[0][0] <= cutoff:
            self._idle.pop(0)[1].quit_nowait()

    def _on_timer(self) -> None:
        self._timer = None
        self._prune()
        if self._idle:     # the oldest left expires idle_seconds after it was put
            delay = self._idle[0][0] + self.idle_seconds - time.monotonic()
            self._timer = asyncio.get_running_loop().call_later(max(delay, 0.01),
                                                                self._on_timer)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        idle, self._idle = self._idle, []
        await asyncio.gather(*(c.close() for _, c in idle))
