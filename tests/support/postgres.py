"""A private PostgreSQL from Debian's `postgresql` package for the tests: `initdb` and
`postgres` into a temporary directory, as the package's `postgres` user (PostgreSQL
refuses to run as root), listening on a unix socket only; never the system cluster.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from .wait import wait_for

BIN = Path("/usr/lib/postgresql/15/bin")


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "PostgreSQL tests: need root (to run the server as user postgres)"
    if not (BIN / "initdb").exists():
        return "PostgreSQL tests: apt-get install postgresql (scripts/setup --test)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "PostgreSQL tests: no user postgres (apt-get install postgresql)"
    return None


class Postgres:
    def __init__(self) -> None:
        # Short path: the socket's name must fit 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="mt-pg-"))
        self.data = self.dir / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        pg = pwd.getpwnam("postgres")
        os.chown(self.dir, pg.pw_uid, pg.pw_gid)
        self.dir.chmod(0o755)

    @property
    def url(self) -> str:
        """The [presence] database URL: the unix socket, no password."""
        return f"postgresql://postgres@/mailtalk?host={self.dir}"

    def _as_postgres(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv]

    def start(self) -> "Postgres":
        """Made (initdb, createdb) at the first start; started again after `stop`."""
        first = not self.data.exists()
        if first:
            subprocess.run(self._as_postgres(str(BIN / "initdb"), "-D", str(self.data), "-A",
                                             "trust", "-U", "postgres", "-E", "UTF8"),
                           check=True, capture_output=True, timeout=120)
        self.proc = subprocess.Popen(self._as_postgres(
            str(BIN / "postgres"), "-D", str(self.data), "-c", "listen_addresses=",
            "-c", f"unix_socket_directories={self.dir}", "-c", "fsync=off"),
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "server.log", "wb"))
        socket = self.dir / ".s.PGSQL.5432"
        wait_for(lambda: socket.exists() and self._ready(), timeout=30, what="PostgreSQL")
        if first:
            subprocess.run(self._as_postgres(str(BIN / "createdb"), "-h", str(self.dir),
                                             "mailtalk"), check=True, capture_output=True,
                           timeout=30)
        return self

    def _ready(self) -> bool:
        return subprocess.run(self._as_postgres(str(BIN / "pg_isready"), "-h", str(self.dir)),
                              capture_output=True, timeout=10).returncode == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(self._as_postgres(str(BIN / "pg_ctl"), "stop", "-D", str(self.data),
                                             "-m", "fast", "-w"), capture_output=True, timeout=60)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
