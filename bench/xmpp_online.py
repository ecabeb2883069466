"""Keeps ejabberd users online for the lookup benchmark: a minimal XMPP client.

Just enough of RFC 6120 for a plain-TCP loopback c2s listener: stream header, SASL
PLAIN, stream restart, resource binding, initial presence. No TLS (loopback only,
the private ejabberd's listener has STARTTLS off). Not a general XMPP client.
"""

from __future__ import annotations

import asyncio
import base64
import re

STREAM = ("<?xml version='1.0'?><stream:stream to='{host}' version='1.0' "
          "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
READ_TIMEOUT = 10.0


class XmppSession:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 user: str = "") -> None:
        self.user = user
        self.reader = reader
        self.writer = writer
        self.buf = ""

    async def expect(self, pattern: str) -> str:
        """Read until `pattern` appears; return the text up to the end of the match."""
        rx = re.compile(pattern, re.S)
        while True:
            m = rx.search(self.buf)
            if m:
                seen, self.buf = self.buf[:m.end()], self.buf[m.end():]
                return seen
            chunk = await asyncio.wait_for(self.reader.read(65536), READ_TIMEOUT)
            if not chunk:
                raise ConnectionError(f"XMPP stream closed while waiting for {pattern!r}")
            self.buf += chunk.decode("utf-8", "replace")

    def send(self, xml: str) -> None:
        self.writer.write(xml.encode("utf-8"))

    def close(self) -> None:
        self.writer.close()


async def go_online(ip: str, port: int, host: str, user: str, password: str,
                    show: str = "") -> XmppSession:
    """Log `user@host` in and send its initial presence; the session stays open."""
    reader, writer = await asyncio.open_connection(ip, port)
    s = XmppSession(reader, writer, user)
    s.send(STREAM.format(host=host))
    await s.expect(r"</stream:features>")
    cred = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    s.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>")
    seen = await s.expect(r"<success[^>]*/>|<success.*?</success>|<failure.*?</failure>")
    if "<failure" in seen:
        s.close()
        raise PermissionError(f"XMPP login of {user}@{host} refused")
    s.send(STREAM.format(host=host))
    await s.expect(r"</stream:features>")
    s.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
           "<resource>bench</resource></bind></iq>")
    await s.expect(r"<iq[^>]*id=.b1.*?</iq>")
    show_el = f"<show>{show}</show>" if show else ""
    s.send(f"<presence>{show_el}</presence>")
    await s.writer.drain()
    return s


async def open_many(ip: str, port: int, host: str, users: list[str], password: str,
                    concurrency: int = 64) -> tuple[list[XmppSession], int]:
    """Log every user in (at most `concurrency` log-ins at once); (sessions, failures)."""
    sem = asyncio.Semaphore(concurrency)
    sessions: list[XmppSession] = []
    failed = 0

    async def one(user: str) -> None:
        nonlocal failed
        async with sem:
            try:
                sessions.append(await go_online(ip, port, host, user, password))
            except (OSError, ConnectionError, PermissionError, asyncio.TimeoutError):
                failed += 1
    await asyncio.gather(*(one(u) for u in users))
    return sessions, failed
