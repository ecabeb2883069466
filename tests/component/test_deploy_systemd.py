"""deploy/systemd: each unit runs a real subcommand as Type=notify, and what Type=notify
relies on (READY=1 once listening, STOPPING=1 on SIGTERM) holds for the real command."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from support.systemd_units import UNITS, unit
from support.wait import free_port, wait_for


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_runs_a_real_subcommand_as_notify(path):
    svc = unit(path)["Service"]
    assert svc["Type"] == "notify" and svc["User"] == "mailtalk"
    argv = svc["ExecStart"].split()
    config = ("/etc/mailtalk/presence-%i.toml" if path.name.endswith("@.service")
              else "/etc/mailtalk/mailtalk.toml")          # a template: one per instance
    assert argv[1:3] == ["-c", config]
    r = subprocess.run([sys.executable, "-m", "mailtalk", argv[3], "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    if argv[3] in ("run", "milter"):           # the milter's unix socket for Postfix
        assert svc["UMask"] == "0007" and svc["SupplementaryGroups"] == "postfix"


def test_type_notify_ready_and_stopping(tmp_path, mailtalk_factory):
    """What Type=notify relies on: READY=1 once listening, STOPPING=1 on SIGTERM."""
    sock_path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.1)
    got: list[str] = []

    def received(word: str) -> bool:
        try:
            got.append(sock.recv(256).decode())
        except (TimeoutError, BlockingIOError):
            pass
        return any(word in g for g in got)
    try:
        port = free_port("127.0.14.30")
        svc = mailtalk_factory({"filter": {"listen": f"127.0.14.30:{port}",
                                           "reinject": f"127.0.14.30:{free_port('127.0.14.30')}"}},
                               subcommand="filter", env={"NOTIFY_SOCKET": sock_path})
        wait_for(lambda: received("READY=1"), timeout=10, what="READY=1")
        svc.stop()
        wait_for(lambda: received("STOPPING=1"), timeout=10, what="STOPPING=1")
    finally:
        sock.close()
