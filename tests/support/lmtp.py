"""LMTP on loopback for the hook's component tests: a scripted next hop (aiosmtpd's
LMTP server, answering per recipient by local part) and a client that reads the one
reply per recipient after DATA (Python's smtplib.LMTP reads only one).

The scripted next hop stands in for Dovecot where a test needs replies Dovecot does
not give on demand (a 5xx after DATA for one recipient, a hang-up mid-replies); the
end-to-end tests use a real Dovecot (support.dovecot).

Next-hop replies by local part:
    rej5*  550 at RCPT            tmp4*  451 at RCPT
    late5* 552 after DATA         late4* 452 after DATA
    gone*  the connection drops before this recipient's reply after DATA
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope, Session


@dataclass
class NextHop:
    """What the next hop received: one entry per recipient copy accepted."""
    copies: dict[str, list[bytes]] = field(default_factory=dict)
    transactions: int = 0
    connections: int = 0
    mail_options: list[list[str]] = field(default_factory=list)

    async def handle_EHLO(self, server: LMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return responses[:-1] + ["250-PIPELINING", responses[-1]]

    async def handle_RCPT(self, server: LMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        local = address.split("@")[0]
        if local.startswith("rej5"):
            return f"550 5.1.1 <{address}> User doesn't exist"
        if local.startswith("tmp4"):
            return f"451 4.3.0 <{address}> Temporary internal error"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: LMTP, session: Session, envelope: Envelope) -> str:
        self.transactions += 1
        self.mail_options.append(list(envelope.mail_options))
        replies = []
        for rcpt in envelope.rcpt_tos:
            local = rcpt.split("@")[0]
            if local.startswith("gone"):
                if replies:
                    await server.push("\r\n".join(replies))
                assert server.transport is not None
                server.transport.abort()
                return "421 gone"
            if local.startswith("late5"):
                replies.append(f"552 5.2.2 <{rcpt}> Quota exceeded")
            elif local.startswith("late4"):
                replies.append(f"452 4.2.2 <{rcpt}> Mailbox busy")
            else:
                self.copies.setdefault(rcpt, []).append(envelope.original_content or b"")
                replies.append(f"250 2.0.0 <{rcpt}> Saved")
        return "\r\n".join(replies)


class _CountingLMTP(LMTP):
    def __init__(self, handler: NextHop, **kw: Any) -> None:
        super().__init__(handler, **kw)
        handler.connections += 1


async def start_next_hop(host: str) -> tuple[asyncio.AbstractServer, NextHop, int]:
    hop = NextHop()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _CountingLMTP(hop, decode_data=False, enable_SMTPUTF8=True, hostname="nexthop"),
        host=host, port=0)
    return server, hop, server.sockets[0].getsockname()[1]


@dataclass
class LmtpResult:
    rcpt: list[str]          # the reply to each RCPT
    data: list[str]          # after the message: one reply per recipient accepted at RCPT


def lmtp_send(where: tuple[str, int] | str, sender: str, rcpts: list[str], message: bytes,
              timeout: float = 20.0) -> LmtpResult:
    """One LMTP transaction, commands pipelined as Postfix's lmtp client sends them."""
    family = socket.AF_UNIX if isinstance(where, str) else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(timeout)
        s.connect(where)
        f = s.makefile("rb")

        def reply() -> str:
            lines = []
            while True:
                line = f.readline()
                if not line:
                    raise ConnectionError(f"closed after {lines}")
                lines.append(line.decode().rstrip("\r\n"))
                if line[3:4] != b"-":
                    return "\n".join(lines)

        assert reply().startswith("220")
        s.sendall(b"LHLO client.test\r\n")
        assert reply().startswith("250")
        cmds = [f"MAIL FROM:<{sender}>"] + [f"RCPT TO:<{r}>" for r in rcpts] + ["DATA"]
        s.sendall("".join(c + "\r\n" for c in cmds).encode())
        assert reply().startswith("250"), "MAIL refused"
        rcpt_replies = [reply() for _ in rcpts]
        data = reply()
        if not data.startswith("354"):
            return LmtpResult(rcpt_replies, [data])
        body = message.replace(b"\r\n.", b"\r\n..")
        s.sendall(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        accepted = sum(1 for r in rcpt_replies if r.startswith("2"))
        data_replies = [reply() for _ in range(accepted)]
        s.sendall(b"QUIT\r\n")
        return LmtpResult(rcpt_replies, data_replies)
