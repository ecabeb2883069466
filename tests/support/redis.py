"""A private redis-server from Debian's package for the tests: a unix socket in a
temporary directory, no TCP port, no persistence; never the system service."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .wait import wait_for

REDIS = "/usr/bin/redis-server"


def unavailable() -> str | None:
    if shutil.which(REDIS) is None:
        return "Redis tests: apt-get install redis-server (scripts/setup --test)"
    return None


class Redis:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mt-redis-"))
        self.socket = self.dir / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix:{self.socket}"

    def start(self) -> "Redis":
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen([REDIS, "--port", "0", "--unixsocket", str(self.socket),
                                      "--unixsocketperm", "700", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.dir)],
                                     stdout=open(self.dir / "redis.log", "ab"),
                                     stderr=subprocess.STDOUT)
        wait_for(lambda: self.socket.exists(), timeout=15, what="redis-server")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
