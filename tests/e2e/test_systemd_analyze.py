"""deploy/systemd: the units pass Debian's `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.systemd_units import UNITS

MAILTALK = str(Path(sys.executable).parent / "mailtalk")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_units_pass_systemd_analyze_verify(tmp_path):
    for path in UNITS:                          # the venv's mailtalk stands in for /opt's
        text = path.read_text().replace("/opt/mailtalk/bin/mailtalk", MAILTALK)
        (tmp_path / path.name).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / p.name) for p in UNITS)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "mailtalk" not in r.stderr, r.stderr  # no warning about our units
