"""The filter's SMTP side (milter/filter_smtp.py): replies to a pipelined group go out
in one write, nothing waits when the client does not pipeline, and the fast address
parser agrees with aiosmtpd's. Real sockets on loopback; the lookup is a fake, as in
test_filter_smtp.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from mailtalk_milter.filter_smtp import FilterSMTP
from test_filter_receiving import CLAIM, FakeLookup, msg
from test_filter_smtp import HOST, XFWD, _harness

TIMEOUT = 5.0


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One whole (possibly multi-line) reply."""
    out = b""
    while True:
        line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        assert line.endswith(b"\r\n"), f"connection closed after {out!r}"
        out += line
        if line[3:4] == b" ":
            return out


class Session:
    """A raw client connection to the filter, and a record of the filter's writes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 server: FilterSMTP) -> None:
        self.reader, self.writer, self.writes = reader, writer, []
        real_write = server._writer.write

        def spy(data: bytes) -> None:
            self.writes.append(bytes(data))
            real_write(data)
        server._writer.write = spy  # type: ignore[method-assign]

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


async def open_session(running: Any) -> Session:
    reader, writer = await asyncio.open_connection(HOST, running.port)
    assert (await read_reply(reader)).startswith(b"220")
    writer.write(b"EHLO mx.b.example\r\n")
    assert b"PIPELINING" in await read_reply(reader)
    (server,) = running.handler.sessions
    return Session(reader, writer, server)


@pytest.fixture
async def running() -> Any:
    harness, things = await _harness(FakeLookup("online"))
    yield harness.running
    await things[0].close()
    things[1].close()


async def test_replies_to_a_pipelined_group_go_out_in_one_write(running: Any) -> None:
    s = await open_session(running)
    await s.send(f"XFORWARD {XFWD}\r\nMAIL FROM:<alice@a.example>\r\n"
                 "RCPT TO:<bob@b.example>\r\nDATA\r\n".encode())
    replies = [await read_reply(s.reader) for _ in range(4)]
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354"]
    assert s.writes == [b"".join(replies)]          # one write, in order
    await s.send(msg(*CLAIM) + b".\r\n")
    assert (await read_reply(s.reader)).startswith(b"250")
    await s.send(b"QUIT\r\n")
    assert (await read_reply(s.reader)).startswith(b"221")
    assert len(s.writes) == 3
    s.writer.close()


async def test_a_client_that_waits_for_each_reply_gets_each_at_once(running: Any) -> None:
    s = await open_session(running)
    for command, code in ((b"MAIL FROM:<alice@a.example>", b"250"),
                          (b"RCPT TO:<bob@b.example>", b"250"),
                          (b"RSET", b"250"), (b"NOOP", b"250")):
        await s.send(command + b"\r\n")
        assert (await read_reply(s.reader)).startswith(code), command
    assert len(s.writes) == 4
    s.writer.close()


async def test_a_refusal_in_a_pipelined_group_keeps_its_place(running: Any) -> None:
    s = await open_session(running)
    await s.send(b"MAIL FROM:<alice@a.example>\r\nRCPT TO:<bob@b..example>\r\n"
                 b"RCPT TO:<carol@b.example>\r\nRSET\r\n")
    replies = [await read_reply(s.reader) for _ in range(4)]
    assert [r[:1] for r in replies] == [b"2", b"5", b"2", b"2"]
    assert len(s.writes) == 1
    s.writer.close()


class _NoSessions:
    sessions: set[Any] = set()


@pytest.mark.parametrize("arg", [
    "<bob@b.test>", "<bob@b.test> SIZE=100 BODY=8BITMIME", " <x@y>", "<BOB@B.TEST>",
    "<a.b+c@d-e.f>", "<a@-b.c>", "<a@b.c>x", "<a@b.c>\tSIZE=1", "<a@b.c> (note) SIZE=1",
    "<>", "<> SIZE=5", '<"a b"@c.d>', "<@r:a@b.c>", "bob@b.test", "<bob@[1.2.3.4]>",
    "<a..b@c>", "<.a@c>", "<a@b..c>", "<a@b.c.>", "<a@b.c", "<jörg@b.test>",
    "<" + "x" * 70 + "@b.test>",
])
def test_plain_addresses_parse_as_aiosmtpd_parses_them(arg: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        ours = FilterSMTP(_NoSessions(), loop=loop)
        theirs = SMTP(_NoSessions(), loop=loop)
        assert ours._getaddr(arg) == theirs._getaddr(arg)
    finally:
        loop.close()
