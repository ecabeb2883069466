"""deploy/systemd and deploy/dns: the files a postmaster copies are valid and say
what the code does."""

from __future__ import annotations

import configparser
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest

from mailtalk.config import parse_text
from mailtalk.cli.check import zone_line
from mailtalk.discovery import choose_record
from support.wait import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "deploy/systemd").glob("*.service"))
MAILTALK = str(Path(sys.executable).parent / "mailtalk")


def unit(path: Path) -> configparser.ConfigParser:
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str
    p.read(path)
    return p


def test_every_part_has_a_unit():
    names = {u.name for u in UNITS}
    assert names == {"mailtalk.service", "mailtalk-milter.service",
                     "mailtalk-filter.service", "mailtalk-presence.service"}


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_runs_a_real_subcommand_as_notify(path):
    svc = unit(path)["Service"]
    assert svc["Type"] == "notify" and svc["User"] == "mailtalk"
    argv = svc["ExecStart"].split()
    assert argv[1:3] == ["-c", "/etc/mailtalk/mailtalk.toml"]
    r = subprocess.run([sys.executable, "-m", "mailtalk", argv[3], "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    if argv[3] in ("run", "milter"):           # the milter's unix socket for Postfix
        assert svc["UMask"] == "0007" and svc["SupplementaryGroups"] == "postfix"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_units_pass_systemd_analyze_verify(tmp_path):
    for path in UNITS:                          # the venv's mailtalk stands in for /opt's
        text = path.read_text().replace("/opt/mailtalk/bin/mailtalk", MAILTALK)
        (tmp_path / path.name).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / p.name) for p in UNITS)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "mailtalk" not in r.stderr, r.stderr  # no warning about our units


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


def test_zone_example_is_valid_and_matches_mailtalk_dns():
    text = (ROOT / "deploy/dns/mailtalk.zone.example").read_text()
    zone = dns.zone.from_text(text, origin="example.", relativize=False, check_origin=False)
    found = {}
    for name, rdataset in zone.iterate_rdatasets(dns.rdatatype.TXT):
        texts = [b"".join(r.strings).decode() for r in rdataset]
        found[str(name)] = choose_record(texts).api
    assert found == {"_mailtalk.a.example.": "https://chat.a.example",
                     "_mailtalk.b.example.": "https://chat.a.example"}
    cfg = parse_text('[domains]\nnames = ["a.example", "b.example"]\n'
                     '[presence]\npublic_url = "https://chat.a.example"\n', "t")
    for domain in cfg.domains.names:                # the same record `mailtalk dns` prints
        line = zone_line(domain, cfg.presence.public_url)
        z = dns.zone.from_text(line, origin=".", relativize=False, check_origin=False)
        rd = next(iter(z.iterate_rdatas(dns.rdatatype.TXT)))[2]
        assert choose_record([b"".join(rd.strings).decode()]).api == found[f"_mailtalk.{domain}."]
