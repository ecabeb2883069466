"""Which services may run twice on one state directory (mailtalk/cli/runner.py)."""

from __future__ import annotations

from mailtalk.cli.runner import lock_name
from mailtalk.config import parse_text


def test_presence_on_postgresql_locks_per_listen_address_else_per_service() -> None:
    sqlite = parse_text('[domains]\nnames = ["a.test"]\n[presence]\nlisten = "127.0.0.1:8470"\n',
                        "t")
    pg = parse_text('[domains]\nnames = ["a.test"]\n[presence]\nlisten = "127.0.0.1:8471"\n'
                    'database = "postgresql://m@/m?host=/run/postgresql"\n', "t")
    assert lock_name(sqlite, "presence") == "presence"        # one process per SQLite file
    assert lock_name(pg, "presence") == "presence-127.0.0.1-8471"
    assert lock_name(pg, "milter") == "milter"
