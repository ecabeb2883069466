"""The LMTP hook's client: hands each recipient's copy to the site's LMTP server
(`[filter] lmtp_next`: Dovecot, Cyrus), over TCP or a unix socket.

It is the re-injection client (`reinject.py`: the bytes pass unchanged, only
dot-stuffed; every reply comes back as a value) speaking LMTP: LHLO instead of EHLO,
and after the message one reply per accepted recipient (RFC 2033). One transaction,
`deliver`, sends MAIL, every RCPT and DATA in one write when the server offers
PIPELINING, so a copy costs one round trip before the message and one after.

`deliver` answers for every recipient it was given, in order: the server's own reply
(2xx/4xx/5xx) where there is one, else a 4xx of ours (timeout, connection lost) that
says so. A reply read is a reply kept: if the connection breaks after the server
answered for some recipients, those answers stand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence

from mailtalk.config_values import HostPort, UnixPath
from mailtalk_milter.reinject import REPLY_LINE_MAX, ReinjectClient, ReinjectError, Reply, stuffed


def ours(reason: str) -> Reply:
    """A deferral of our own making for one recipient: the client retries only it."""
    return Reply(451, (f"4.4.2 Error: LMTP next hop: {reason}; try again later",))


class LmtpClient(ReinjectClient):
    HELLO = b"LHLO"

    def __init__(self, target: HostPort | UnixPath, timeout: float, helo: str) -> None:
        host, port = (target.host, target.port) if isinstance(target, HostPort) else ("", 0)
        super().__init__(host, port, timeout, helo)
        self.target = target
        # The server answered something in the last `deliver`: from then on the copy
        # may have been delivered, and a retry of ours could deliver it twice.
        self.answered = False

    def _open(self) -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        if isinstance(self.target, UnixPath):
            return asyncio.open_unix_connection(self.target.path, limit=REPLY_LINE_MAX * 2)
        return super()._open()

    def where(self) -> str:
        return str(self.target)

    async def deliver(self, sender: str, options: Iterable[str], rcpts: Sequence[str],
                      message: bytes) -> list[Reply]:
        """One copy of `message` to `rcpts`: one reply per recipient, in order. On a
        broken connection the client is aborted and must not be reused."""
        out: list[Reply | None] = [None] * len(rcpts)
        self.answered = False
        # Until the last reply is read: a connection left mid-way (a cancellation, an
        # error) is never pooled, where a late reply would be read as another mail's.
        self.in_transaction = True
        try:
            await self._deliver(sender, options, rcpts, message, out)
        except ReinjectError as e:
            self.abort()
            reason = str(e)
            return [r if r is not None else ours(reason) for r in out]
        self.in_transaction = False
        return [r if r is not None else ours("no reply") for r in out]

    async def _deliver(self, sender: str, options: Iterable[str], rcpts: Sequence[str],
                       message: bytes, out: list[Reply | None]) -> None:
        lines = ([self._mail_line(sender, options)]
                 + [f"RCPT TO:<{r}>".encode("utf-8", errors="surrogateescape") for r in rcpts]
                 + [b"DATA"])
        if any(b"\r" in x or b"\n" in x for x in lines):
            raise ValueError("CR or LF in an LMTP command")
        if "PIPELINING" in self.extensions:
            await self._send(b"".join(x + b"\r\n" for x in lines))
            mail = await self._read_reply()
            self.answered = True
            rcpt_replies = [await self._read_reply() for _ in rcpts]
            data = await self._read_reply()
        else:
            mail = await self.command(lines[0])
            self.answered = True
            if not mail.ok:
                out[:] = [mail] * len(rcpts)
                return
            rcpt_replies = [await self.command(x) for x in lines[1:-1]]
            data = (await self.command(b"DATA") if any(r.ok for r in rcpt_replies)
                    else Reply(503, ("no valid recipients",)))
        if not mail.ok:          # the server's refusal of the sender is every recipient's
            out[:] = [mail] * len(rcpts)
            if data.code == 354:
                raise ReinjectError(f"DATA accepted after MAIL was refused: {data}")
            return
        accepted = [i for i, r in enumerate(rcpt_replies) if r.ok]
        for i, r in enumerate(rcpt_replies):
            if not r.ok:
                out[i] = r
        if data.code != 354:
            for i in accepted:        # DATA refused: that reply for every accepted one
                out[i] = data
            await self.rset()         # MAIL was accepted: end that transaction
            return
        if not accepted:
            raise ReinjectError(f"DATA accepted with no recipient: {data}")
        await self._send(stuffed(message))
        for i in accepted:            # RFC 2033: one reply per accepted recipient
            out[i] = await self._read_reply()
