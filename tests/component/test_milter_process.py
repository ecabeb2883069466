"""The real `mailtalk milter` process, driven by OpenDKIM's miltertest (a real milter
client speaking the protocol as an MTA does) with tests/milter/sending.lua; and
its life cycle: SIGTERM and Ctrl-C stop it cleanly, a busy socket is one clear line."""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mailtalk.mailid import MailIds
from support import free_port
from support.mailtalk import MailtalkService, run_mailtalk

HOST = "127.0.11.4"
LUA = Path(__file__).parent / "milter" / "sending.lua"

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


def test_ctrl_c_stops_it_cleanly(tmp_path: Path) -> None:
    socket = f"inet:{free_port(HOST)}@{HOST}"
    svc = MailtalkService(tmp_path, milter_config(socket), subcommand="milter").start()
    proc = svc.proc
    assert proc is not None
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=5) == 0, svc.log_tail()
    finally:
        svc.kill()
    assert "Traceback" not in svc.log()


def test_busy_socket_is_one_clear_line(tmp_path: Path) -> None:
    socket = f"inet:{free_port(HOST)}@{HOST}"
    first = MailtalkService(tmp_path, milter_config(socket), subcommand="milter",
                            name="first").start()
    try:
        cfg_path = tmp_path / "second.toml"
        cfg_path.write_text(first.config_path.read_text())
        res = run_mailtalk(cfg_path, "milter", timeout=30)
        assert res.returncode == 2
        assert f"[milter] socket: cannot listen on {socket}" in res.stderr
        assert "Traceback" not in res.stderr
    finally:
        first.stop(timeout=5)


LOOP_ENDS_BY_ITSELF = """
import asyncio, logging, sys, threading
from mailtalk.cli import runner
from mailtalk.config import load_file
from mailtalk_milter import libmilter_host, milter_socket, sending

logging.basicConfig(level=logging.INFO)
cfg = load_file(sys.argv[1])
# libmilter's loop ends without close(): as when its own signal thread takes a
# SIGTERM. The process must notice and stop everything by itself.
threading.Timer(0.5, libmilter_host.milter.stop).start()
threading.Timer(0.7, milter_socket.poke, [cfg.milter.socket]).start()
sys.exit(asyncio.run(asyncio.wait_for(runner.serve(cfg, ["milter"]), 20)))
"""


def test_libmilter_loop_ending_by_itself_stops_the_process(tmp_path: Path) -> None:
    socket = f"inet:{free_port(HOST)}@{HOST}"
    svc = MailtalkService(tmp_path, milter_config(socket), subcommand="milter")
    res = subprocess.run([sys.executable, "-c", LOOP_ENDS_BY_ITSELF, str(svc.config_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "libmilter's loop ended: stopping" in res.stderr


def test_unusable_outbox_is_one_clear_line(tmp_path: Path) -> None:
    cfg = milter_config(f"inet:{free_port(HOST)}@{HOST}")
    (tmp_path / "not-a-dir").write_text("a file where a directory should be")
    cfg["milter"]["outbox"] = str(tmp_path / "not-a-dir" / "outbox.sqlite3")
    svc = MailtalkService(tmp_path, cfg, subcommand="milter")
    res = run_mailtalk(svc.config_path, "milter", timeout=30)
    assert res.returncode == 2, res.stderr
    assert "[milter] outbox: cannot open" in res.stderr and "Traceback" not in res.stderr
