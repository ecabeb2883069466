"""The one way mailtalk opens an SQLite file: owner-only, WAL, one worker thread.

The presence store, the filter's delivered store and the milter's outbox all hold
mail data (addresses, text, password hashes): the file and its -wal/-shm (SQLite
gives them the file's mode) are for the service's user only. A file found with a
looser mode is tightened and the log says so.

Thread model: sqlite3 blocks, so asyncio code runs every call of one connection in
one dedicated thread (`Worker`): the event loop never waits on the disk and the
connection needs no lock. The milter's outbox is called from libmilter's own threads,
synchronously; it takes `owner_only` from here and opens its connections itself, with
a lock of its own and no checkpoint inside an insert (outbox.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("mailtalk.sqlite")
T = TypeVar("T")

BUSY_TIMEOUT = 5.0           # seconds a writer waits for another process's lock


def owner_only(path: Path) -> None:
    """Create `path` (and its folder) for this user only; tighten a looser mode.

    An existing file is never opened here: closing any descriptor of a file drops
    every POSIX lock this process holds on it (fcntl semantics), SQLite's included,
    and another process could then reset the WAL under a connection of ours."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        # Made here, not by sqlite3.connect(), which would give it the umask's mode.
        # No connection to it exists yet: closing this descriptor drops no lock.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        return
    if mode & 0o077:
        os.chmod(path, mode & 0o700)
        log.warning("%s: was readable by others (mode %o): now %o", path, mode, mode & 0o700)


def connect(path: Path | str, *, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """An autocommit connection in WAL mode; `:memory:` for tests."""
    if str(path) != ":memory:":
        owner_only(Path(path))
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                         timeout=BUSY_TIMEOUT)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
    except BaseException:
        db.close()
        raise
    return db


class Worker:
    """One thread that runs every call on one connection, for asyncio code."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
