"""The built wheel, as a postmaster installs it (`pip install mailtalk-*.whl` into a new
venv, dependencies from the package index): every subcommand runs from it, the
services start and stop, a trial mail goes through them, and the man pages land where
man(1) finds them. A package or data file left out of pyproject.toml fails here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from support.mailtalk import MailtalkService
from support.wait import free_port

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.21.1"
SOURCES = ("pyproject.toml", "README.md", "mailtalk", "milter", "presence_api", "deploy")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The venv with the wheel installed; yields its bin/mailtalk."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    for name in SOURCES:               # a copy: building writes build/ and *.egg-info
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip"]
    r = subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(base / "dist"), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr, r.stderr          # the build itself is quiet
    wheel = next((base / "dist").glob("mailtalk-*.whl"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    yield venv / "bin" / "mailtalk"


def config() -> dict[str, dict[str, object]]:
    url = f"http://{HOST}:{free_port(HOST)}"
    return {"domains": {"names": ["localhost"]},
            "milter": {"socket": f"inet:{free_port(HOST)}@{HOST}"},
            "filter": {"listen": f"{HOST}:{free_port(HOST)}",
                       "reinject": f"{HOST}:{free_port(HOST)}"},
            "presence": {"listen": url.removeprefix("http://"), "public_url": url},
            "dns": {"static": {"localhost": "self"}}}


def test_every_subcommand_runs_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    program = str(installed)
    for argv in (["--help"], ["--version"], *([s, "--help"] for s in (
            "run", "milter", "filter", "presence", "check", "dns", "trial", "user"))):
        r = subprocess.run([program, *argv], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "mailtalk" in r.stdout, (argv, r.stderr)

    for one in ("milter", "filter", "presence"):
        svc = MailtalkService(tmp_path, config(), subcommand=one, name=one, program=program)
        with svc:
            pass                      # started (its endpoint answered), stopped with 0

    with MailtalkService(tmp_path, config(), name="run", program=program) as svc:
        r = svc.command("user", "add", "alice@localhost", "--password-stdin",
                        input="a long password\n")
        assert r.returncode == 0, r.stderr
        r = svc.command("user", "passwd", "alice@localhost", "--password-stdin",
                        input="another long password\n")
        assert r.returncode == 0, r.stderr
        assert "alice@localhost" in svc.command("user", "list").stdout
        r = svc.command("dns")
        assert r.returncode == 0 and r.stdout.startswith("_mailtalk.localhost. "), r.stderr
        r = svc.command("check")
        assert "Traceback" not in r.stdout + r.stderr and "ok   presence service answers" \
            in r.stdout, r.stdout + r.stderr
        r = svc.command("trial", "alice@localhost", "bob@localhost")
        assert r.returncode == 0 and "X-Sender-Online: no; account=alice@localhost" in r.stdout, \
            r.stdout + r.stderr
        r = svc.command("user", "remove", "alice@localhost")
        assert r.returncode == 0, r.stderr
    assert "Traceback" not in svc.log()

    man = installed.parent.parent / "share" / "man"
    for page in ("man8/mailtalk.8", "man5/mailtalk.toml.5"):
        assert (man / page).read_text() == (ROOT / "deploy" / "man" / Path(page).name).read_text()
    if shutil.which("man"):             # man-db: <prefix>/share/man for <prefix>/bin on PATH
        r = subprocess.run(["man", "-w", "mailtalk"], capture_output=True, text=True,
                           timeout=30, env={"PATH": f"{installed.parent}:/usr/bin:/bin"})
        assert r.stdout.strip() == str(man / "man8" / "mailtalk.8"), r.stderr
