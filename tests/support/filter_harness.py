"""The content filter on loopback between a real SMTP client and a real re-injection
sink (an aiosmtpd server answering 250/4xx/5xx per recipient), with a fake lookup."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailtalk.config import parse_text
from mailtalk_milter import filter as filt
from support import free_port
from support.smtp_client import send
from support.smtp_sink import SinkHandler, start_sink

HOST = "127.0.13.2"
SINK_HOST = "127.0.13.3"
XFWD = "NAME=mx.a.example ADDR=192.0.2.7 PROTO=ESMTP HELO=mx.a.example IDENT=4FQX1234ZZ SOURCE=REMOTE"


class Harness:
    def __init__(self, running: filt.Running, sink: SinkHandler, lookup: object) -> None:
        self.running, self.sink, self.lookup = running, sink, lookup

    async def send(self, rcpts: list[str], data: bytes, **kw) -> object:
        return await asyncio.to_thread(send, HOST, self.running.port, "alice@a.example",
                                       rcpts, data, **kw)


async def start_filter(lookup: object, reinject_port: int | None = None,
                       lookup_timeout: float = 2.0, state_dir: Path | None = None,
                       extra: str = "", limits: object = None) -> tuple[Harness, list]:
    """`state_dir`: where the filter keeps its record of partial deliveries (made only
    when a test defers one; None: the default state dir). `extra`: more [filter] keys.
    `limits`: the connection limits (filter_smtp.SmtpLimits; None: the defaults)."""
    sink_server, sink, sink_port = await start_sink(SINK_HOST)
    port = free_port(HOST)
    site = f'[site]\nstate_dir = "{state_dir}"\n' if state_dir else ""
    cfg = parse_text(f"""{site}
[filter]
listen = "{HOST}:{port}"
reinject = "{SINK_HOST}:{reinject_port or sink_port}"
lookup_timeout = {lookup_timeout}
reinject_timeout = 5
{extra}
""", "test")
    running = await filt.start(cfg, asyncio.Event(), lookup=lookup, limits=limits)
    return Harness(running, sink, lookup), [running, sink_server]
