"""Runs one or several services in one process and stops them all cleanly.

Each part exposes `async def start(cfg, stop) -> Running`: it starts serving, returns
an object whose `close()` stops it, and sets the `stop` event itself if it dies on its
own, so that the whole process then shuts down instead of limping on.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import socket
from typing import Protocol

from mailtalk.config import Config

log = logging.getLogger("mailtalk")

# Start order: the presence service first (the milter's outbox and the local
# filter talk to it), the MTA-facing parts last; they stop in reverse order.
PARTS = {
    "presence": "presence_api.server",
    "filter": "mailtalk_milter.filter",
    "milter": "mailtalk_milter.sending",
}


class Running(Protocol):
    async def close(self) -> None: ...


def _sd_notify(state: str) -> None:
    """systemd Type=notify support, without a dependency: one datagram."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), addr)
    except OSError as e:
        log.warning("cannot notify systemd: %s", e)


async def serve(cfg: Config, names: list[str]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running: list[tuple[str, Running]] = []
    try:
        for name in PARTS:
            if name in names:
                try:
                    module = importlib.import_module(PARTS[name])
                except ModuleNotFoundError as e:
                    if e.name and PARTS[name].startswith(e.name):
                        log.error("%s is not built yet", PARTS[name])
                        return 2
                    raise
                running.append((name, await module.start(cfg, stop)))
        loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
        log.info("mailtalk ready (%s; config: %s; event loop: %s)",
                 ", ".join(n for n, _ in running), cfg.source, loop_name)
        _sd_notify("READY=1")
        await stop.wait()
        log.info("stopping")
        _sd_notify("STOPPING=1")
    finally:
        for name, part in reversed(running):
            try:
                await part.close()
            except Exception:
                log.exception("%s did not stop cleanly", name)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
