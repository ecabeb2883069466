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
import resource
import signal
import socket
from typing import Callable, Protocol

from mailtalk.cli import runlock
from mailtalk.config import Config

log = logging.getLogger("mailtalk")

# Start order: the presence service first (the milter's outbox and the local
# filter talk to it), the MTA-facing parts last; they stop in reverse order.
PARTS = {
    "presence": "presence_api.server",
    "filter": "mailtalk_milter.filter",
    "milter": "mailtalk_milter.sending",
}


# The soft limit aimed at when the hard one is unlimited (not on Linux, where the hard
# limit is at most fs.nr_open): systemd's own default hard limit.
NOFILE_IF_UNLIMITED = 524288


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


def raise_nofile_limit(
        getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
        setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit) -> int:
    """The soft RLIMIT_NOFILE raised to the hard one; returns the soft limit in force.

    Every connection is a descriptor, and the usual soft limit of 1024 is reached by a
    connection flood long before memory runs out. The low soft limit exists for
    programs that use select(); nothing here does (asyncio and uvloop use epoll,
    libmilter poll). The units set LimitNOFILE (deploy/systemd). Not fatal: a failure
    is a warning and the process runs with the limit it has."""
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_IF_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        log.debug("open files: soft limit %s (hard %s)", soft, hard)
        return soft
    try:
        setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as e:
        log.warning("cannot raise the open-file limit from %d to %d: %s; a connection "
                    "flood reaches it sooner", soft, target, e)
        return soft
    log.debug("open files: soft limit raised from %d to %d (hard %s)", soft, target, hard)
    return target


def lock_name(cfg: Config, name: str) -> str:
    """One process per service and state directory; presence on PostgreSQL may run
    several (one per `[presence] listen`), on SQLite one per database."""
    if name == "presence" and cfg.presence.database.startswith(("postgresql:", "postgres:")):
        return f"presence-{cfg.presence.listen.host}-{cfg.presence.listen.port}"
    return name


async def serve(cfg: Config, names: list[str]) -> int:
    try:
        locks = runlock.hold(cfg.site.state_dir, [lock_name(cfg, n) for n in names])
    except (runlock.AlreadyRunning, OSError) as e:
        log.error("%s", e)
        return 1
    try:
        return await _serve(cfg, names)
    finally:
        for fd in locks:
            os.close(fd)


async def _serve(cfg: Config, names: list[str]) -> int:
    raise_nofile_limit()
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
        if cfg.metrics.listen is not None:
            from mailtalk.cli import metrics_listener
            running.append(("metrics", await metrics_listener.start(cfg)))
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
