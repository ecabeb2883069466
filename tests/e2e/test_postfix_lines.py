"""The Postfix lines that `scripts/run` prints (`scripts/postfix-lines`) paste into a
main.cf and a master.cf as they are: Debian's postconf reads back exactly the intended
parameters and services (a line indented by mistake would have become part of the
previous parameter's value)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.requires import require_postfix

ROOT = Path(__file__).resolve().parents[2]


def pasted(tmp: Path, *args: str) -> Path:
    """A Postfix config directory made of the printed lines, section by section."""
    out = subprocess.run([str(ROOT / "scripts/postfix-lines"), *args], capture_output=True,
                         text=True, check=True).stdout
    files = {"main.cf": [], "master.cf": []}
    target = None
    for line in out.splitlines():
        if line.startswith("# --- add to "):
            target = line.split()[4]
            continue
        assert target is not None, line
        files[target].append(line)
    d = tmp / "postfix"
    d.mkdir()
    for name, lines in files.items():
        (d / name).write_text("\n".join(lines) + "\n")
    return d


def postconf(d: Path, *args: str) -> str:
    return subprocess.run(["postconf", "-c", str(d), *args], capture_output=True, text=True,
                          check=True).stdout


def main_cf(d: Path) -> dict[str, str]:
    """main.cf's parameters as Postfix reads them (postconf -c adds config_directory)."""
    values = dict(line.split(" = ", 1) for line in postconf(d, "-n").splitlines())
    values.pop("config_directory", None)
    return values


def test_printed_lines_give_the_intended_parameters(tmp_path: Path) -> None:
    require_postfix()
    d = pasted(tmp_path)
    main = main_cf(d)
    assert main == {"non_smtpd_milters": "inet:127.0.0.1:8894",
                    "milter_default_action": "accept", "milter_protocol": "6",
                    "content_filter": "mailtalk:[127.0.0.1]:10025",
                    "receive_override_options": "no_address_mappings"}
    services = {tuple(line.split()[:2]) for line in postconf(d, "-M").splitlines()}
    assert services == {("submission", "inet"), ("submissions", "inet"),
                        ("mailtalk", "unix"), ("127.0.0.1:10026", "inet")}
    overrides = postconf(d, "-P")
    assert "submission/inet/smtpd_milters = inet:127.0.0.1:8894" in overrides
    assert ("127.0.0.1:10026/inet/receive_override_options = no_unknown_recipient_checks,"
            "no_header_body_checks,no_milters") in overrides


def test_printed_lmtp_lines_give_the_intended_parameters(tmp_path: Path) -> None:
    require_postfix()
    d = pasted(tmp_path, "--lmtp")
    main = main_cf(d)
    assert main["virtual_transport"] == "lmtp:inet:127.0.0.1:10024"
    assert main["lmtp_send_xforward_command"] == "yes" and "content_filter" not in main
