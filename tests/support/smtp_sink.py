"""A re-injection sink under the test's control: an aiosmtpd server with XFORWARD,
as Postfix's re-injection smtpd offers it, answering 250/4xx/5xx per recipient and
DATA replies in turn; and `AcceptAll`, a handler that takes every mail."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    content: bytes
    xforward: list[str]


class SinkSMTP(SMTP):
    """aiosmtpd plus XFORWARD, as Postfix's re-injection smtpd offers it."""

    def __init__(self, handler: "SinkHandler", **kw: Any) -> None:
        super().__init__(handler, **kw)
        self.xforward: list[str] = []

    async def smtp_XFORWARD(self, arg: str | None) -> None:
        self.xforward.append(arg or "")
        await self.push("250 2.0.0 Ok")


class SinkHandler:
    """Answers per recipient by local part: `rej5*` 550, `tmp4*` 450, else 250.

    `data_replies` (a list) gives DATA replies in turn ("drop" hangs up instead).
    """

    def __init__(self) -> None:
        self.got: list[Received] = []
        self.data_replies: list[str] = []
        self.transactions = 0
        self.data_delay = 0.0           # seconds before answering DATA

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return responses[:-1] + ["250-XFORWARD NAME ADDR PROTO HELO IDENT SOURCE PORT",
                                 responses[-1]]

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        local = address.split("@")[0]
        if local.startswith("rej5"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: no such user"
        if local.startswith("tmp4"):
            return f"450 4.2.0 <{address}>: Recipient address rejected: try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SinkSMTP, session: Session, envelope: Envelope) -> str:
        self.transactions += 1
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        reply = self.data_replies.pop(0) if self.data_replies else "250 2.0.0 Ok: queued as SINK"
        if reply == "drop":
            assert server.transport is not None
            server.transport.abort()
            return "421 gone"
        if reply.startswith("250"):
            self.got.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos),
                                     envelope.original_content or b"", list(server.xforward)))
        server.xforward = []
        return reply


async def start_sink(host: str) -> tuple[asyncio.AbstractServer, SinkHandler, int]:
    handler = SinkHandler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SinkSMTP(handler, enable_SMTPUTF8=True, decode_data=False,
                         hostname="sink.test", data_size_limit=None, loop=loop),
        host=host, port=0)
    return server, handler, server.sockets[0].getsockname()[1]


class AcceptAll:
    """An aiosmtpd handler that accepts every mail (a stand-in SMTP service)."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"
