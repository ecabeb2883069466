"""Waiting for conditions with deadlines (never fixed sleeps) and picking free ports."""

from __future__ import annotations

import socket
import time
from typing import Callable, TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0


def wait_for(predicate: Callable[[], T], timeout: float = DEFAULT_TIMEOUT,
             interval: float = 0.05, what: str = "condition") -> T:
    """Poll predicate() until it returns something truthy; return that value.

    Raises AssertionError naming `what` (and the last exception the predicate raised,
    if any) once `timeout` seconds have passed. The predicate is always tried once
    more at the deadline, so a slow machine never fails a test that just made it.
    Other exceptions from the predicate count as "not yet"; an AssertionError from
    it gives up at once (e.g. the server being waited for has exited).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        expired = time.monotonic() >= deadline
        try:
            value = predicate()
            if value:
                return value
            last_error = None
        except AssertionError:
            raise
        except Exception as e:  # the predicate may fail until the thing is up
            last_error = e
        if expired:
            extra = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{extra}")
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (the kernel picks it).

    Each engineer has an address of their own, so a race with another test run
    for the same address and port is all but impossible.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that is free on `host` (for DNS servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Wait until host:port accepts TCP connections, or raise AssertionError."""
    wait_for(lambda: port_open(host, port), timeout=timeout,
             what=f"a server on {host}:{port}")


def wait_port_closed(host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Wait until nothing listens on host:port any more."""
    wait_for(lambda: not port_open(host, port), timeout=timeout,
             what=f"{host}:{port} to close")
