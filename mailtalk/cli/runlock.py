"""One process per service and state directory: a second `mailtalk run` says that
mailtalk is already running (with the pid) instead of "address already in use".

A lock file per service (`<state_dir>/<service>.pid`, holding the pid) under an
flock: the kernel drops the lock when the process ends, however it ends, so a stale
file never blocks a start.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class AlreadyRunning(Exception):
    """str() names the service, the pid and the lock file."""


def hold(state_dir: Path, names: list[str]) -> list[int]:
    """Lock each service's file; the descriptors stay open for the process's life."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    held = []
    for name in names:
        path = state_dir / f"{name}.pid"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            for other in held:
                os.close(other)
            raise AlreadyRunning(f"mailtalk is already running (its {name}: pid {pid}, "
                                 f"lock {path}); stop it first (Ctrl-C, or systemctl stop)"
                                 ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        held.append(fd)
    return held
