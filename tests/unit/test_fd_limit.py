"""The open-file limit: raised to the hard limit at start (mailtalk/cli/runner.py), and
set in every systemd unit."""

from __future__ import annotations

import logging
import resource
import subprocess
import sys
from pathlib import Path

from mailtalk.cli.runner import raise_nofile_limit

UNITS = sorted((Path(__file__).parents[2] / "deploy" / "systemd").glob("*.service"))


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    calls = []
    got = raise_nofile_limit(lambda r: (1024, 65536), lambda r, v: calls.append((r, v)))
    assert calls == [(resource.RLIMIT_NOFILE, (65536, 65536))] and got == 65536


def test_nothing_to_do_when_already_there() -> None:
    calls: list = []
    assert raise_nofile_limit(lambda r: (4096, 4096), lambda r, v: calls.append(v)) == 4096
    assert calls == []


def test_a_refusal_is_a_warning_not_fatal(caplog) -> None:
    def refuse(r, v):
        raise OSError(1, "Operation not permitted")
    with caplog.at_level(logging.WARNING, logger="mailtalk"):
        assert raise_nofile_limit(lambda r: (1024, 65536), refuse) == 1024
    assert "cannot raise the open-file limit from 1024 to 65536" in caplog.text


def test_in_a_process_started_with_a_low_soft_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    code = ("import resource; from mailtalk.cli.runner import raise_nofile_limit; "
            "raise_nofile_limit(); print(*resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run([sys.executable, "-c", code], preexec_fn=lower, check=True,
                         capture_output=True, text=True, timeout=60).stdout.split()
    assert out == [str(hard), str(hard)]


def test_every_unit_sets_limit_nofile() -> None:
    assert UNITS
    for unit in UNITS:
        lines = unit.read_text().splitlines()
        assert "LimitNOFILE=65536" in lines, unit.name
