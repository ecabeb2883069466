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
from mailtalk_milter.reinject import ReinjectClient
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
async def harness() -> Any:
    h, things = await _harness(FakeLookup("online"))
    yield h
    await things[0].close()
    things[1].close()


@pytest.fixture
async def running(harness: Any) -> Any:
    return harness.running


class UpstreamWrites:
    """Every write of the filter's re-injection clients (ReinjectClient._send)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[bytes] = []
        real = ReinjectClient._send

        async def spy(client: ReinjectClient, data: bytes) -> None:
            self.sent.append(data)
            await real(client, data)
        monkeypatch.setattr(ReinjectClient, "_send", spy)


async def pipelined_mail(s: Session, sender: str, rcpt: str) -> list[bytes]:
    """One pipelined group as Postfix sends it for one recipient; the replies."""
    await s.send(f"XFORWARD {XFWD}\r\nMAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\n"
                 "DATA\r\n".encode())
    return [await read_reply(s.reader) for _ in range(4)]


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


async def test_a_one_recipient_mail_goes_upstream_in_two_writes(
        harness: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Postfix's XFORWARD/MAIL/RCPT/DATA group for one recipient: the filter sends its
    # XFORWARD, MAIL, RCPT and DATA to a re-injection server offering PIPELINING in one
    # write, the message in a second.
    harness.sink.pipelining = True
    writes = UpstreamWrites(monkeypatch)
    s = await open_session(harness.running)
    replies = await pipelined_mail(s, "alice@a.example", "bob@b.example")
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354"]
    await s.send(msg(*CLAIM) + b".\r\n")
    assert (await read_reply(s.reader)).startswith(b"250")
    sent = [w for w in writes.sent if not w.startswith(b"EHLO ")]   # a new connection's
    assert len(sent) == 2, sent
    first = sent[0]
    assert first.startswith(b"XFORWARD ") and first.endswith(
        b"MAIL FROM:<alice@a.example>\r\nRCPT TO:<bob@b.example>\r\nDATA\r\n")
    (got,) = harness.sink.got
    assert got.rcpts == ["bob@b.example"] and b"X-Sender-Online: yes" in got.content
    s.writer.close()


@pytest.mark.parametrize("sender, rcpt, refused_at", [
    ("alice@a.example", "rej5bob@b.example", 1),     # the next hop refuses the recipient
    ("alice@a.example", "tmp4bob@b.example", 1),
    ("rej5alice@a.example", "bob@b.example", 0),     # ... or the sender
])
async def test_a_refusal_sent_ahead_is_passed_on_and_the_next_mail_goes_through(
        harness: Any, sender: str, rcpt: str, refused_at: int) -> None:
    harness.sink.pipelining = True
    s = await open_session(harness.running)
    await s.send(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
    replies = [await read_reply(s.reader) for _ in range(3)]
    codes = [r[:1] for r in replies]
    assert codes[refused_at] in (b"4", b"5") and codes[2] in (b"5", b"4"), replies
    assert codes[refused_at][0] == (b"4" if "tmp4" in rcpt else b"5")[0]
    assert harness.sink.got == []
    # The session and its re-injection connection are back in step: a second mail.
    await s.send(b"RSET\r\n")
    assert (await read_reply(s.reader)).startswith(b"250")
    replies = await pipelined_mail(s, "alice@a.example", "carol@b.example")
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354"]
    await s.send(msg(*CLAIM) + b".\r\n")
    assert (await read_reply(s.reader)).startswith(b"250")
    assert [g.rcpts for g in harness.sink.got] == [["carol@b.example"]]
    s.writer.close()
