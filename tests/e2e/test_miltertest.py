"""The real `mailtalk milter` process driven by OpenDKIM's miltertest (Debian's
miltertest: a real milter client speaking the protocol as an MTA does) with
tests/e2e/sending.lua, over inet: and unix: sockets."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from mailtalk.mailid import MailIds
from support import free_port
from support.mailtalk import MailtalkService

HOST = "127.0.11.4"
LUA = Path(__file__).parent / "sending.lua"

pytestmark = pytest.mark.skipif(shutil.which("miltertest") is None,
                                reason="needs Debian's miltertest (scripts/setup --test)")


def milter_config(socket: str) -> dict[str, dict[str, object]]:
    # presence_api points at a closed port: the mail must not wait for it.
    return {"domains": {"names": ["a.test"]},
            "milter": {"socket": socket, "presence_api": f"http://{HOST}:{free_port(HOST)}",
                       "outbox_retry_max": 1}}


@pytest.mark.parametrize("kind", ["inet", "unix"])
def test_miltertest_script_against_running_milter(tmp_path: Path, kind: str) -> None:
    socket = (f"inet:{free_port(HOST)}@{HOST}" if kind == "inet"
              else f"unix:{tmp_path}/run/milter.sock")
    svc = MailtalkService(tmp_path, milter_config(socket), subcommand="milter").start()
    try:
        out = subprocess.run(["miltertest", "-D", f"socket={socket}", "-s", str(LUA)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "all ok" in out.stdout, out.stdout + out.stderr
        mail_id = re.search(r"^mail-id: (\S+)$", out.stdout, re.M).group(1)
        key = (svc.state_dir / "site.key").read_bytes()
        assert MailIds(key, 30).verify("alice@a.test", mail_id)
        # Recorded in the outbox (the service is down, so it waits there).
        with sqlite3.connect(svc.state_dir / "outbox.sqlite3") as db:
            rows = db.execute("SELECT mail_id, queue_id FROM outbox").fetchall()
        assert rows == [(mail_id, "MTQID1")]
        assert "MTQID2: deleted 3 forged copies" in svc.log()
        if kind == "unix":
            mode = (tmp_path / "run" / "milter.sock").stat().st_mode & 0o777
            assert mode == 0o660
    finally:
        svc.stop(timeout=5)                      # SIGTERM: exit 0 within 5 s
