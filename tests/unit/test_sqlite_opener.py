"""mailtalk.sqlite's opener: owner-only files, and no lock of ours lost on the way."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from mailtalk import sqlite


def _other_process_can_leave_wal(path: Path) -> bool:
    """Leaving WAL mode needs every other connection gone: a connection of ours holds
    a shared lock on the database file that forbids it."""
    code = ("import sqlite3, sys\n"
            "db = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
            "try:\n    mode = db.execute('PRAGMA journal_mode=DELETE').fetchone()[0]\n"
            "except sqlite3.OperationalError:\n    sys.exit(1)\n"
            "sys.exit(0 if mode == 'delete' else 1)\n")
    return subprocess.run([sys.executable, "-c", code, str(path)]).returncode == 0


def test_new_file_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.sqlite3"
    db = sqlite.connect(path)
    db.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_looser_mode_is_tightened_with_a_warning(tmp_path: Path, caplog) -> None:
    path = tmp_path / "x.sqlite3"
    path.write_bytes(b"")
    path.chmod(0o644)
    sqlite.owner_only(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "was readable by others (mode 644)" in caplog.text


def test_a_second_connection_keeps_the_first_ones_lock(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops this process's POSIX locks on it: the
    opener must not open and close a file that a connection of ours holds."""
    path = tmp_path / "x.sqlite3"
    first = sqlite.connect(path)
    first.execute("CREATE TABLE t (x)")
    first.execute("BEGIN")
    first.execute("SELECT * FROM t").fetchall()     # a read transaction: a shared lock
    assert not _other_process_can_leave_wal(path)
    second = sqlite.connect(path)                   # opening another must not drop it
    assert not _other_process_can_leave_wal(path)
    first.execute("COMMIT")
    first.close()
    second.close()
