"""The LMTP hook over real LMTP on loopback: the hook (ours) between a client that reads
one reply per recipient and a scripted LMTP next hop (support.lmtp: aiosmtpd's LMTP
server, answering per recipient). Only the presence lookup is a fake (it stands in for
DNS and HTTP). The real Dovecot behind the hook is in the end-to-end tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

import pytest

from mailtalk import headers, online_header
from mailtalk.config import parse_text
from mailtalk_milter import filter as filt
from support import free_port
from support.fake_lookup import CLAIM, FakeLookup, msg
from support.lmtp import LmtpResult, NextHop, lmtp_send, start_next_hop

HOST, HOP_HOST = "127.0.13.20", "127.0.13.21"


class Hook:
    def __init__(self, running: filt.Running, hop: NextHop, lookup: FakeLookup,
                 where: tuple[str, int] | str) -> None:
        self.running, self.hop, self.lookup, self.where = running, hop, lookup, where

    async def send(self, rcpts: list[str], data: bytes) -> LmtpResult:
        return await asyncio.to_thread(lmtp_send, self.where, "alice@a.example", rcpts, data)


async def start_hook(lookup: FakeLookup, tmp: Path, *, unix: bool = False,
                     next_port: int | None = None, extra: str = "") -> tuple[Hook, list]:
    hop_server, hop, hop_port = await start_next_hop(HOP_HOST)
    listen = f"unix:{tmp}/lmtp.sock" if unix else f"{HOST}:{free_port(HOST)}"
    cfg = parse_text(f"""
[site]
state_dir = "{tmp}"
[filter]
mode = "lmtp"
socket_group = ""
listen = "{listen}"
lmtp_next = "{HOP_HOST}:{next_port or hop_port}"
reinject_timeout = 5
{extra}
""", "test")
    running = await filt.start(cfg, asyncio.Event(), lookup=lookup)
    where: tuple[str, int] | str = (f"{tmp}/lmtp.sock" if unix
                                    else (HOST, cfg.filter.listen.port))
    return Hook(running, hop, lookup, where), [running, hop_server]


@pytest.fixture
async def hook(tmp_path: Path) -> AsyncIterator[Hook]:
    h, things = await start_hook(FakeLookup("online"), tmp_path)
    yield h
    await things[0].close()
    things[1].close()


def online_of(content: bytes) -> list[online_header.SenderOnline]:
    fields, _ = headers.split_message(content)
    return [online_header.parse_value(headers.field_value(f)) for f in fields
            if headers.field_name(f) == b"x-sender-online"]


async def test_each_recipient_gets_its_own_copy_link_and_reply(hook: Hook) -> None:
    forged = ("X-Sender-Online: yes; account=evil@e.example; status=online; "
              "checked=2026-01-01T00:00:00Z; chat=<https://evil.example/c/x>")
    r = await hook.send(["bob@b.example", "carol@b.example"],
                        msg(*CLAIM, forged, "Subject: hi", "Content-Type: text/plain"))
    assert [x[:3] for x in r.rcpt] == ["250", "250"]
    assert [x[:3] for x in r.data] == ["250", "250"], r.data
    assert set(hook.hop.copies) == {"bob@b.example", "carol@b.example"}
    links = {}
    for rcpt, copies in hook.hop.copies.items():
        assert len(copies) == 1
        (online,) = online_of(copies[0])
        assert online.state == "yes" and online.chat is not None
        links[rcpt] = online.chat
        assert online.chat.encode() in copies[0].split(b"\r\n\r\n", 1)[1]   # the notice
        assert b"evil" not in copies[0]
    assert links["bob@b.example"] != links["carol@b.example"]
    assert len(hook.lookup.calls) == 1          # one lookup for both recipients
    assert hook.hop.connections == 1            # both copies over one connection


async def test_next_hop_replies_pass_per_recipient(hook: Hook) -> None:
    rcpts = ["bob@b.example", "rej5@b.example", "tmp4@b.example", "late5@b.example",
             "late4@b.example", "carol@b.example"]
    r = await hook.send(rcpts, msg(*CLAIM, "Subject: mixed"))
    assert [x[:3] for x in r.data] == ["250", "550", "451", "552", "452", "250"], r.data
    assert "User doesn't exist" in r.data[1] and "Quota exceeded" in r.data[3]
    assert sorted(hook.hop.copies) == ["bob@b.example", "carol@b.example"]


async def test_a_mail_without_claim_is_one_copy_for_all(hook: Hook) -> None:
    r = await hook.send(["bob@b.example", "carol@b.example"], msg("Subject: plain"))
    assert [x[:3] for x in r.data] == ["250", "250"]
    assert hook.hop.transactions == 1
    assert hook.lookup.calls == []


async def test_next_hop_down_defers_every_recipient(tmp_path: Path) -> None:
    dead = free_port(HOP_HOST)
    h, things = await start_hook(FakeLookup("online"), tmp_path, next_port=dead)
    try:
        r = await h.send(["bob@b.example", "carol@b.example"], msg(*CLAIM, "Subject: x"))
        assert [x[:3] for x in r.data] == ["451", "451"], r.data
        assert "LMTP next hop" in r.data[0]
    finally:
        await things[0].close()
        things[1].close()


async def test_a_hang_up_mid_replies_keeps_the_replies_read(hook: Hook) -> None:
    # Same header for all (no claim): one copy; the next hop answers bob, then drops.
    r = await hook.send(["bob@b.example", "gone@b.example", "carol@b.example"],
                        msg("Subject: plain"))
    assert [x[:3] for x in r.data] == ["250", "451", "451"], r.data
    assert list(hook.hop.copies) == ["bob@b.example"]
    # The next mail gets a fresh connection.
    r = await hook.send(["carol@b.example"], msg("Subject: again"))
    assert [x[:3] for x in r.data] == ["250"]


async def test_lookup_error_still_delivers(tmp_path: Path) -> None:
    h, things = await start_hook(FakeLookup(error=RuntimeError("bug")), tmp_path)
    try:
        r = await h.send(["bob@b.example"], msg(*CLAIM, "Subject: x"))
        assert [x[:3] for x in r.data] == ["250"]
        (online,) = online_of(h.hop.copies["bob@b.example"][0])
        assert online.state == "unknown"
    finally:
        await things[0].close()
        things[1].close()


async def test_unix_socket_listener(tmp_path: Path) -> None:
    h, things = await start_hook(FakeLookup("offline"), tmp_path, unix=True)
    try:
        r = await h.send(["bob@b.example", "carol@b.example"], msg(*CLAIM, "Subject: x"))
        assert [x[:3] for x in r.data] == ["250", "250"]
        assert h.hop.transactions == 2
    finally:
        await things[0].close()
        things[1].close()


async def test_over_size_is_a_4xx_per_recipient(tmp_path: Path) -> None:
    h, things = await start_hook(FakeLookup("online"), tmp_path,
                                 extra="max_message_size = 2048")
    try:
        r = await h.send(["bob@b.example", "carol@b.example"],
                         msg("Subject: big", body=b"x" * 70 + b"\r\n" * 100 + b"y" * 4000 + b"\r\n"))
        assert [x[:3] for x in r.data] == ["452", "452"], r.data
        assert h.hop.copies == {}
    finally:
        await things[0].close()
        things[1].close()
