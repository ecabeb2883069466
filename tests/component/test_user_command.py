"""`mailtalk user ...` as a real subprocess, the way a postmaster runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from support.presence_app import make_config

BIN = Path(sys.executable).with_name("mailtalk")


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    make_config(tmp_path)            # the same text, checked by the loader
    path = tmp_path / "mailtalk.toml"
    path.write_text(f'[site]\nstate_dir = "{tmp_path}"\n[domains]\nnames = ["a.test"]\n'
                    f'[presence]\nlisten = "127.0.12.1:8470"\n'
                    f'database = "{tmp_path}/presence.sqlite3"\n')
    return path


def user(conf: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAILTALK_CONFIG"}
    return subprocess.run([str(BIN), "-c", str(conf), "user", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, env=env)


def test_user_add_list_passwd_remove(conf: Path) -> None:
    r = user(conf, "add", "alice@a.test", "--password-stdin", stdin="a good password\n")
    assert r.returncode == 0, r.stderr
    assert "added alice@a.test" in r.stdout
    r = user(conf, "list")
    head, row = r.stdout.splitlines()
    assert r.returncode == 0 and head.split() == ["ACCOUNT", "PRESENCE", "CREATED", "(UTC)"]
    assert row.split()[:2] == ["alice@a.test", "auto"]

    r = user(conf, "add", "Alice@A.test", "--password-stdin", stdin="another password\n")
    assert r.returncode == 1 and "exists already" in r.stderr

    r = user(conf, "passwd", "alice@a.test", "--password-stdin", stdin="a new password\n")
    assert r.returncode == 0, r.stderr
    r = user(conf, "passwd", "nobody@a.test", "--password-stdin", stdin="a new password\n")
    assert r.returncode == 1 and "no such account" in r.stderr

    r = user(conf, "remove", "alice@a.test")
    assert r.returncode == 0
    assert user(conf, "list").stdout.splitlines()[1:] == []
    r = user(conf, "remove", "alice@a.test")
    assert r.returncode == 1 and "no such account" in r.stderr


def test_user_add_refuses_foreign_domains_and_weak_passwords(conf: Path) -> None:
    r = user(conf, "add", "bob@b.test", "--password-stdin", stdin="a good password\n")
    assert r.returncode == 1 and "not one of this site's" in r.stderr
    r = user(conf, "add", "bob@a.test", "--password-stdin", stdin="short\n")
    assert r.returncode == 1 and "at least 8" in r.stderr
    r = user(conf, "add", "not-an-account", "--password-stdin", stdin="a good password\n")
    assert r.returncode == 1 and "not an account" in r.stderr
    assert user(conf, "list").stdout.splitlines()[1:] == []


def test_the_password_works_for_web_login(conf: Path, tmp_path: Path) -> None:
    """The hash the command stores is the one the web log-in checks (argon2)."""
    import asyncio

    from presence_api.auth import _verify
    from presence_api.store_sqlite import SqliteStore
    assert user(conf, "add", "carol@a.test", "--password-stdin",
                stdin="carol's password\n").returncode == 0

    async def stored() -> str:
        s = SqliteStore(tmp_path / "presence.sqlite3")
        await s.open()
        try:
            acct = await s.get_account("carol@a.test")
            assert acct is not None
            return acct.password_hash
        finally:
            await s.close()
    h = asyncio.run(stored())
    assert h.startswith("$argon2")
    assert _verify(h, "carol's password") and not _verify(h, "carol's passwort")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user")
def test_root_acts_as_the_owner_of_the_database_directory() -> None:
    """systemd runs the service as `mailtalk`; a postmaster runs `mailtalk user` as root.
    The database and SQLite's side files must end up owned by the directory's owner."""
    with tempfile.TemporaryDirectory(dir="/tmp") as top:   # pytest's tmp is root-only
        _root_acts_as_owner(Path(top))


def _root_acts_as_owner(tmp_path: Path) -> None:
    nobody = 65534
    tmp_path.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, nobody, nobody)
    conf = tmp_path / "mailtalk.toml"
    conf.write_text(f'[site]\nstate_dir = "{state}"\n[domains]\nnames = ["a.test"]\n'
                    f'[presence]\nlisten = "127.0.12.1:8470"\n')
    conf.chmod(0o644)
    r = user(conf, "add", "alice@a.test", "--password-stdin", stdin="a good password\n")
    assert r.returncode == 0, r.stderr
    files = list(state.iterdir())
    assert any(f.name == "presence.sqlite3" for f in files)
    assert all(f.stat().st_uid == nobody for f in files), [(f, f.stat().st_uid) for f in files]
