"""The `mailtalk` command as a user runs it: a real subprocess."""

import os
import re
import subprocess
import sys

import pytest

MAILTALK = [sys.executable, "-m", "mailtalk"]
SUBCOMMANDS = ["run", "milter", "filter", "presence", "check", "dns", "trial", "user"]


def mailtalk(*args: str, env: dict | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(MAILTALK + list(args), capture_output=True, text=True, timeout=60,
                          input=stdin, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_every_subcommand_has_help(sub):
    r = mailtalk(sub, "--help")
    assert r.returncode == 0 and "usage: mailtalk" in r.stdout


def test_bad_config_stops_with_one_line_naming_file_and_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[filter]\nlisten = "nowhere"\n')
    r = mailtalk("-c", str(cfg), "run")
    assert r.returncode == 2
    assert r.stderr.strip() == f"mailtalk: {cfg}: [filter] listen: expected HOST:PORT, got 'nowhere'"


def test_options_go_before_or_after_the_subcommand(tmp_path):
    """`mailtalk dns -c FILE` as well as `mailtalk -c FILE dns`; a key in the wrong
    section names the section it belongs in."""
    cfg = tmp_path / "wrong.toml"
    cfg.write_text("[filter]\nretention_days = 60\n")
    for argv in (("-c", str(cfg), "dns"), ("dns", "-c", str(cfg)), ("user", "list", "-c", str(cfg))):
        r = mailtalk(*argv)
        assert r.returncode == 2, argv
        assert f"{cfg}: [filter] retention_days: unknown key here; it belongs in [presence]" \
            in r.stderr, r.stderr


def test_env_config_is_used(tmp_path):
    cfg = tmp_path / "env.toml"
    cfg.write_text("[nope]\n")
    r = mailtalk("run", env={"MAILTALK_CONFIG": str(cfg)})
    assert r.returncode == 2 and f"{cfg}: [nope]: unknown section" in r.stderr


def test_run_with_no_service_section_says_so(tmp_path):
    cfg = tmp_path / "empty.toml"
    cfg.write_text('[dns]\nnameservers = []\n')
    r = mailtalk("-c", str(cfg), "run")
    assert r.returncode == 2 and "nothing to run" in r.stderr


@pytest.mark.skipif(os.path.exists("/etc/mailtalk/mailtalk.toml"), reason="a real config exists here")
def test_without_any_config_every_subcommand_uses_the_embedded_defaults():
    env = {k: v for k, v in os.environ.items() if k != "MAILTALK_CONFIG"}
    r = subprocess.run(MAILTALK + ["dns"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r'_mailtalk\.localhost\. 3600 IN TXT "v=mailtalk1; '
                        r'api=http://127\.0\.0\.1:8470; k=[A-Za-z0-9+/]{43}="', r.stdout.strip())


@pytest.mark.parametrize("choice, loop", [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_services_run_on_the_configured_event_loop(tmp_path, choice, loop):
    # A real `mailtalk presence` process: its ready line names the loop it runs on.
    from support.wait import free_port, wait_for
    cfg = tmp_path / "m.toml"
    port = free_port("127.0.10.77")
    cfg.write_text(f'[site]\nstate_dir = "{tmp_path}/state"\nevent_loop = "{choice}"\n'
                   f'[domains]\nnames = ["a.test"]\n'
                   f'[presence]\nlisten = "127.0.10.77:{port}"\n'
                   f'public_url = "http://127.0.10.77:{port}"\n')
    log = tmp_path / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(MAILTALK + ["-c", str(cfg), "presence"], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "mailtalk ready" in log.read_text(), 30, what="mailtalk ready")
        assert f"event loop: {loop})" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(15)


def test_dns_prints_one_record_per_domain_with_the_signing_key(tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'[site]\nstate_dir = "{tmp_path}"\n'
                   '[domains]\nnames = ["a.example", "B.example"]\n'
                   '[presence]\npublic_url = "https://chat.a.example/"\n')
    r = mailtalk("-c", str(cfg), "dns")
    assert r.returncode == 0 and "warning" not in r.stderr.lower()
    from mailtalk.lookup_signing import load_or_create_signing_key, public_key_text
    key_file = tmp_path / "lookup-signing.key"
    assert key_file.stat().st_mode & 0o777 == 0o600         # made at first use, owner only
    k = public_key_text(load_or_create_signing_key(key_file))
    assert r.stdout.splitlines() == [
        f'_mailtalk.a.example. 3600 IN TXT "v=mailtalk1; api=https://chat.a.example; k={k}"',
        f'_mailtalk.b.example. 3600 IN TXT "v=mailtalk1; api=https://chat.a.example; k={k}"']


def test_dns_warns_about_http_off_loopback_and_splits_long_records(tmp_path):
    cfg = tmp_path / "m.toml"
    long_url = "http://chat.a.example/" + "p" * 300
    cfg.write_text(f'[site]\nstate_dir = "{tmp_path}"\n[domains]\nnames = ["a.example"]\n'
                   f'[presence]\npublic_url = "{long_url}"\n')
    r = mailtalk("-c", str(cfg), "dns")
    assert r.returncode == 0 and "https" in r.stderr
    strings = r.stdout.split(" IN TXT ")[1].strip()
    assert strings.count('" "') == 1 and len(strings.split('" "')[0]) <= 256
