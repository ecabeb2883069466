"""deploy/systemd: the units pass Debian's `systemd-analyze verify`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.systemd_units import UNITS

MAILTALK = str(Path(sys.executable).parent / "mailtalk")
MAN_PAGES = sorted((Path(__file__).resolve().parents[2] / "deploy" / "man").glob("mailtalk.*"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_units_pass_systemd_analyze_verify(tmp_path):
    for path in UNITS:                          # the venv's mailtalk stands in for /opt's
        text = path.read_text().replace("/opt/mailtalk/bin/mailtalk", MAILTALK)
        (tmp_path / path.name).write_text(text)
    # Documentation=man:...: verify looks the pages up with man(1); here they are
    # found as the wheel installs them, under <prefix>/share/man.
    man = tmp_path / "share" / "man"
    for page in MAN_PAGES:
        (man / f"man{page.suffix[1:]}").mkdir(parents=True, exist_ok=True)
        shutil.copy(page, man / f"man{page.suffix[1:]}" / page.name)
    r = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / p.name) for p in UNITS)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MANPATH": f"{man}:"})
    assert r.returncode == 0, r.stderr
    assert "mailtalk" not in r.stderr, r.stderr  # no warning about our units
