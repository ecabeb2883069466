"""The real `mailtalk milter` process and its life cycle: Ctrl-C stops it cleanly, a
busy socket or an unusable outbox is one clear line, libmilter's loop ending by
itself stops the process. (Driven by miltertest: tests/e2e/test_miltertest.py.)"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from support import free_port
from support.mailtalk import MailtalkService, run_mailtalk

HOST = "127.0.11.4"


def milter_config(socket: str) -> dict[str, dict[str, object]]:
    # presence_api points at a closed port: the mail must not wait for it.
    return {"domains": {"names": ["a.test"]},
            "milter": {"socket": socket, "presence_api": f"http://{HOST}:{free_port(HOST)}",
                       "outbox_retry_max": 1}}


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
        # Another state directory: not this mailtalk again, another program on the port.
        cfg_path = tmp_path / "second.toml"
        cfg_path.write_text(first.config_path.read_text().replace(
            str(first.state_dir), str(tmp_path / "second-state")))
        res = run_mailtalk(cfg_path, "milter", timeout=30)
        assert res.returncode == 2
        assert f"[milter] socket: cannot listen on {socket}" in res.stderr
        assert "Traceback" not in res.stderr
    finally:
        first.stop(timeout=5)


def test_second_start_says_already_running(tmp_path: Path) -> None:
    """The same config (state directory) started twice: the second says so and which
    pid runs, and leaves the first alone; Ctrl-C on the first logs "milter stopped"."""
    first = MailtalkService(tmp_path, milter_config(f"inet:{free_port(HOST)}@{HOST}"),
                            subcommand="milter").start()
    assert first.proc is not None
    try:
        res = run_mailtalk(first.config_path, "milter", timeout=30)
        assert res.returncode == 1, res.stderr
        assert (f"mailtalk is already running (its milter: pid {first.proc.pid}, lock "
                f"{first.state_dir}/milter.pid)") in res.stderr
        assert first.running
    finally:
        first.proc.send_signal(signal.SIGINT)
        assert first.proc.wait(timeout=10) == 0
    assert "milter stopped" in first.log()
    res = run_mailtalk(first.config_path, "dns", timeout=30)   # the lock went with it
    assert res.returncode == 0


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
