"""`mailtalk user ...` as a real subprocess, the way a postmaster runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.presence_extra import make_config

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
    assert r.returncode == 0 and r.stdout.startswith("alice@a.test\t")

    r = user(conf, "add", "Alice@A.test", "--password-stdin", stdin="another password\n")
    assert r.returncode == 1 and "exists already" in r.stderr

    r = user(conf, "passwd", "alice@a.test", "--password-stdin", stdin="a new password\n")
    assert r.returncode == 0, r.stderr
    r = user(conf, "passwd", "nobody@a.test", "--password-stdin", stdin="a new password\n")
    assert r.returncode == 1 and "no such account" in r.stderr

    r = user(conf, "remove", "alice@a.test")
    assert r.returncode == 0
    assert user(conf, "list").stdout == ""
    r = user(conf, "remove", "alice@a.test")
    assert r.returncode == 1 and "no such account" in r.stderr


def test_user_add_refuses_foreign_domains_and_weak_passwords(conf: Path) -> None:
    r = user(conf, "add", "bob@b.test", "--password-stdin", stdin="a good password\n")
    assert r.returncode == 1 and "not one of this site's" in r.stderr
    r = user(conf, "add", "bob@a.test", "--password-stdin", stdin="short\n")
    assert r.returncode == 1 and "at least 8" in r.stderr
    r = user(conf, "add", "not-an-account", "--password-stdin", stdin="a good password\n")
    assert r.returncode == 1 and "not an account" in r.stderr
    assert user(conf, "list").stdout == ""


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
