"""Small helpers shared by the presence benchmarks: ports, deadlines, /proc figures.

The benchmarks run as plain scripts (`.venv/bin/python bench/presence_bench.py`), so
their sibling modules import by bare name.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import time
from typing import Awaitable, Callable

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port(host: str) -> int:
    """A TCP port free on `host` right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float, what: str,
                   interval: float = 0.1) -> None:
    """Poll `check` until it returns True; raise TimeoutError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except (OSError, asyncio.TimeoutError):
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not ready within {timeout:.0f} s")
        await asyncio.sleep(interval)


def raise_nofile(want: int) -> int:
    """Raise this process's open-file limit to `want` (children inherit it).

    Root may raise the hard limit too; otherwise it goes as far as the hard limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new_hard = hard if hard == resource.RLIM_INFINITY or hard >= want else want
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, new_hard))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(pid: int) -> int:
    """Resident set size of one process, from /proc/PID/statm."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def cpu_seconds(pid: int) -> float:
    """User + system CPU time one process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def find_pid(cmdline_part: str, exe_part: str = "") -> int | None:
    """The first process whose command line contains `cmdline_part` (and `exe_part`)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline_part in cmd and exe_part in cmd:
            return int(name)
    return None


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]
