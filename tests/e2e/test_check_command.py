"""`mailtalk check`.

`check` is run against a real dnsmasq, Debian's postconf reading a throw-away Postfix
config directory (MAIL_CONFIG), and stand-ins for the three services: an aiohttp
server serving /openapi.json, two aiosmtpd servers (filter and re-injection) and a
minimal milter-protocol responder. `check` only probes them; the last test runs
`mailtalk check` against the real receiving milter. `mailtalk dns`:
tests/component/test_cli.py; the milter probe alone: tests/component/test_check_probes.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from mailtalk.cli import check as ops
from mailtalk.config import load_file
from support.dns import mailtalk_txt
from support.dnsmasq import DNS_HOST, Dnsmasq
from support.fake_milter import fake_milter
from support.fake_presence_remote import FakeRemote
from support.smtp_sink import AcceptAll
from support.wait import free_port, wait_for

HOST = "127.0.14.20"


def mailtalk(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailtalk", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def write_config(path: Path, *, presence_port: int, milter_port: int, filter_port: int,
                 reinject_port: int, nameserver: str, public_url: str | None = None) -> Path:
    public_url = public_url or f"http://{HOST}:{presence_port}"
    path.write_text(f"""
[site]
state_dir = "{path.parent}"
[domains]
names = ["a.test", "b.test"]
[milter]
socket = "inet:{milter_port}@{HOST}"
[filter]
listen = "{HOST}:{filter_port}"
reinject = "{HOST}:{reinject_port}"
[presence]
listen = "{HOST}:{presence_port}"
public_url = "{public_url}"
[dns]
nameservers = ["{nameserver}"]
""")
    return path


def postfix_dir(tmp_path: Path, milter_port: int, filter_port: int, reinject_port: int,
                *, complete: bool = True) -> Path:
    d = tmp_path / "postfix"
    d.mkdir()
    main = [f"content_filter = mailtalk:[{HOST}]:{filter_port}", "milter_default_action = accept",
            f"non_smtpd_milters = inet:{HOST}:{milter_port}"]
    master = ["smtp inet n - n - - smtpd",
              f"{HOST}:587 inet n - n - - smtpd",
              f"  -o smtpd_milters=inet:{HOST}:{milter_port}",
              "mailtalk unix - - n - 10 smtp"]
    if complete:
        master += [f"{HOST}:{reinject_port} inet n - n - 10 smtpd", "  -o content_filter=",
                   "  -o receive_override_options=no_unknown_recipient_checks,no_milters"]
    else:
        main = main[:1]
        master = master[:1] + [f"{HOST}:{reinject_port} inet n - n - 10 smtpd"]
    (d / "main.cf").write_text("\n".join(main) + "\n")
    (d / "master.cf").write_text("\n".join(master) + "\n")
    return d


@pytest.fixture
async def site(tmp_path):
    """Stand-ins for every service of one site, and a config naming them."""
    ports = {k: free_port(HOST) for k in ("presence", "milter", "filter", "reinject")}
    remote = await FakeRemote(HOST, ports["presence"]).start()
    milter = await asyncio.start_server(fake_milter, HOST, ports["milter"])
    smtps = [Controller(AcceptAll(), hostname=HOST, port=ports[k]) for k in ("filter", "reinject")]
    for c in smtps:
        c.start()
    # The site publishes its lookup signing key (made here as the filter would at start).
    record = mailtalk_txt(f"http://{HOST}:{ports['presence']}", tmp_path / "lookup-signing.key")
    dns = Dnsmasq({f"_mailtalk.{d}": [record] for d in ("a.test", "b.test")})
    yield ports, dns
    dns.stop()
    for c in smtps:
        c.stop()
    milter.close()
    await remote.stop()


def _config(tmp_path, ports, dns, **kw):
    return load_file(write_config(tmp_path / "mailtalk.toml", presence_port=ports["presence"],
                                  milter_port=ports["milter"], filter_port=ports["filter"],
                                  reinject_port=ports["reinject"], nameserver=dns.nameserver,
                                  **kw))


async def test_check_all_well(tmp_path, site, monkeypatch):
    ports, dns = site
    monkeypatch.setenv("MAIL_CONFIG", str(postfix_dir(tmp_path, ports["milter"],
                                                      ports["filter"], ports["reinject"])))
    findings = await ops.run_checks(_config(tmp_path, ports, dns))
    text = "\n".join(map(str, findings))
    assert [f for f in findings if f.state == "FAIL"] == [], text
    for expect in ("DNS _mailtalk.a.test", "DNS _mailtalk.b.test", "presence service answers",
                   "milter answers", "filter answers", "re-injection answers",
                   "smtpd_milters has the milter", "milter_default_action = accept",
                   "content_filter = mailtalk:", "re-injection service"):
        assert expect in text


async def test_check_names_each_problem_and_what_to_do(tmp_path, site, monkeypatch):
    ports, dns = site
    monkeypatch.setenv("MAIL_CONFIG", str(postfix_dir(tmp_path, ports["milter"], ports["filter"],
                                                      ports["reinject"], complete=False)))
    cfg = _config(tmp_path, ports, dns, public_url=f"http://{HOST}:{ports['presence']}/x")
    text = "\n".join(str(f) for f in await ops.run_checks(cfg) if f.state == "FAIL")
    want = f"http://{HOST}:{ports['presence']}/x"
    k = mailtalk_txt("x", tmp_path / "lookup-signing.key").partition("; k=")[2]
    assert (f"FAIL DNS _mailtalk.a.test: api=http://{HOST}:{ports['presence']} is not "
            f"[presence] public_url {want}; publish: _mailtalk.a.test. 3600 IN TXT "
            f"\"v=mailtalk1; api={want}; k={k}\"") in text
    assert "presence service ([presence] public_url) does not answer" in text  # /x/openapi.json
    assert "no submission service has the milter" in text
    assert f"-o smtpd_milters=inet:{HOST}:{ports['milter']}" in text
    assert f"non_smtpd_milters = inet:{HOST}:{ports['milter']}" in text
    assert "lacks `-o content_filter=`" in text


def test_check_with_nothing_running_exits_1(tmp_path):
    ports = {k: free_port(HOST) for k in ("presence", "milter", "filter", "reinject")}
    dns = Dnsmasq({})
    try:
        cfg = write_config(tmp_path / "m.toml", presence_port=ports["presence"],
                           milter_port=ports["milter"], filter_port=ports["filter"],
                           reinject_port=ports["reinject"], nameserver=dns.nameserver)
        r = mailtalk("-c", str(cfg), "check", env={"MAIL_CONFIG": str(tmp_path / "none")})
    finally:
        dns.stop()
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("FAIL DNS _mailtalk.a.test: no record; publish: ") for line in lines)
    assert any(line.startswith(f"FAIL milter on inet:{ports['milter']}@{HOST}: ") for line in lines)
    assert any(line.startswith(f"FAIL filter on {HOST}:{ports['filter']}: ") for line in lines)
    assert any(line.startswith("FAIL Postfix: postconf failed") for line in lines)
    assert lines[-1].startswith("mailtalk check: ") and "problems" in lines[-1]


async def test_receiving_only_host_checks_that_its_resolver_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(ops, "PROBE_TIMEOUT", 0.5)
    dns = Dnsmasq({})
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)     # reads, never answers
    hole.bind((DNS_HOST, 0))
    try:
        for ns, state in ((dns.nameserver, "ok"), (f"{DNS_HOST}:{hole.getsockname()[1]}", "FAIL")):
            path = tmp_path / f"{state}.toml"
            path.write_text(f'[domains]\nnames = ["b.test"]\n[filter]\n'
                            f'[dns]\nnameservers = ["{ns}"]\n')
            findings = await ops._check_dns(load_file(path))
            assert [f.state for f in findings] == [state], findings
            assert findings[0].text.startswith(f"DNS: {ns} ")
    finally:
        hole.close()
        dns.stop()


# --- [filter] mode = "milter" (Sendmail's form): the receiving milter, not SMTP

def milter_mode_config(path: Path, milter_socket: str, listen_port: int) -> Path:
    """A receiving-only host running the milter form; `listen` is unused (nothing there)."""
    path.write_text(f'[filter]\nmode = "milter"\nmilter_socket = "{milter_socket}"\n'
                    f'listen = "{HOST}:{listen_port}"\nreinject = "{HOST}:{listen_port}"\n')
    return path


def postfix_conf(tmp_path: Path, main: list[str], master: list[str] | None = None) -> Path:
    d = tmp_path / "postfix"
    d.mkdir()
    (d / "main.cf").write_text("\n".join(main) + "\n")
    (d / "master.cf").write_text("\n".join(master or ["smtp inet n - n - - smtpd"]) + "\n")
    return d


async def test_milter_mode_probes_the_milter_socket_and_expects_it_in_smtpd_milters(
        tmp_path, monkeypatch):
    port, unused = free_port(HOST), free_port(HOST)
    server = await asyncio.start_server(fake_milter, HOST, port)
    monkeypatch.setenv("MAIL_CONFIG", str(postfix_conf(
        tmp_path, ["milter_default_action = accept"],
        ["smtp inet n - n - - smtpd", f"  -o smtpd_milters=inet:{HOST}:{port}"])))
    try:
        cfg = load_file(milter_mode_config(tmp_path / "m.toml", f"inet:{port}@{HOST}", unused))
        findings = await ops.run_checks(cfg)
    finally:
        server.close()
    text = "\n".join(map(str, findings))
    assert [f for f in findings if f.state == "FAIL"] == [], text
    assert (f"ok   receiving milter answers on inet:{port}@{HOST} ([filter] milter_socket)"
            in text.splitlines())
    assert (f"ok   Postfix: smtpd_milters has the receiving milter inet:{port}@{HOST} "
            f"(master.cf smtp/inet)") in text.splitlines()
    # Neither the unused SMTP port nor a re-injection service nor a content_filter.
    for absent in (f"{HOST}:{unused}", "re-injection", "content_filter", "filter answers"):
        assert absent not in text, text


async def test_milter_mode_over_a_unix_socket(tmp_path, monkeypatch):
    path = tmp_path / "recv.sock"
    server = await asyncio.start_unix_server(fake_milter, str(path))
    monkeypatch.setenv("MAIL_CONFIG", str(postfix_conf(
        tmp_path, [f"smtpd_milters = unix:{path}"])))
    try:
        cfg = load_file(milter_mode_config(tmp_path / "m.toml", f"unix:{path}", free_port(HOST)))
        findings = await ops.run_checks(cfg)
        server.close()
        await server.wait_closed()
        path.unlink()
        gone = await ops._check_sockets(cfg)
    finally:
        server.close()
    text = "\n".join(map(str, findings))
    assert [f for f in findings if f.state == "FAIL"] == [], text
    assert f"ok   receiving milter answers on unix:{path} ([filter] milter_socket)" in text
    assert f"smtpd_milters has the receiving milter unix:{path} (main.cf)" in text
    assert [str(f) for f in gone if f.state == "FAIL"] == [
        f"FAIL receiving milter on unix:{path} ([filter] milter_socket): no socket at {path}; "
        f"start `mailtalk filter` (or `mailtalk run`); until then Sendmail (F=T) defers mail, "
        f"Postfix does what milter_default_action says"]


def test_milter_mode_with_content_filter_lines_says_what_to_do(tmp_path):
    """The Postfix lines of the content filter, left in place in milter mode: nothing
    listens on [filter] listen, so Postfix would defer every mail."""
    port, listen = free_port(HOST), free_port(HOST)
    conf = postfix_conf(tmp_path, [f"content_filter = mailtalk:[{HOST}]:{listen}"],
                        ["smtp inet n - n - - smtpd", "mailtalk unix - - n - 10 smtp"])
    cfg = milter_mode_config(tmp_path / "m.toml", f"inet:{port}@{HOST}", listen)
    r = mailtalk("-c", str(cfg), "check", env={"MAIL_CONFIG": str(conf)})
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith(f"FAIL receiving milter on inet:{port}@{HOST} "
                               f"([filter] milter_socket): ") for line in lines), r.stdout
    assert (f"FAIL Postfix: no smtpd_milters entry for the receiving milter "
            f"inet:{port}@{HOST} ([filter] mode = \"milter\"): add `smtpd_milters = "
            f"inet:{HOST}:{port}` to main.cf") in r.stdout
    assert (f"FAIL Postfix: content_filter = mailtalk:[{HOST}]:{listen} (main.cf), but "
            f"[filter] mode = \"milter\": nothing listens on {HOST}:{listen}, so Postfix "
            f"defers every mail: remove that content_filter") in r.stdout
    assert not any(line.startswith(("FAIL filter on", "FAIL re-injection", "ok   filter"))
                   for line in lines), r.stdout
    assert "no content_filter to" not in r.stdout


def test_milter_mode_against_the_real_receiving_milter(tmp_path):
    """`mailtalk filter` in milter mode (libmilter through pymilter), then `mailtalk check`."""
    from support.mailtalk import MailtalkService
    port = free_port(HOST)
    conf = postfix_conf(tmp_path, [f"smtpd_milters = inet:{HOST}:{port}"])
    svc = MailtalkService(tmp_path, {"filter": {"mode": "milter",
                                                "milter_socket": f"inet:{port}@{HOST}"}},
                          subcommand="filter", env={"MAIL_CONFIG": str(conf)},
                          wait_endpoints=[f"{HOST}:{port}"])
    with svc:
        r = svc.command("check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ok   receiving milter answers on inet:{port}@{HOST} ([filter] milter_socket)" in r.stdout
    assert f"ok   Postfix: smtpd_milters has the receiving milter inet:{port}@{HOST} (main.cf)" in r.stdout


def _lmtp_greeter(tmp_path: Path) -> tuple[socket.socket, str]:
    """A stand-in for the site's LMTP server that only greets: check reads the greeting."""
    path = str(tmp_path / "next.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(8)

    def serve() -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            with c:
                c.sendall(b"220 next LMTP ready\r\n")
    import threading
    threading.Thread(target=serve, daemon=True).start()
    return s, path


def test_lmtp_mode_against_the_real_hook(tmp_path):
    """`mailtalk filter` in LMTP mode on a unix socket; Postfix's virtual_transport
    names it (relative to the queue directory, as chrooted lmtp(8) sees it)."""
    from support.mailtalk import MailtalkService
    greeter, next_path = _lmtp_greeter(tmp_path)
    queue = tmp_path / "spool"
    listen = queue / "private" / "mailtalk-lmtp"
    good = postfix_conf(tmp_path, [f"queue_directory = {queue}",
                                   "virtual_transport = lmtp:unix:private/mailtalk-lmtp"])
    svc = MailtalkService(tmp_path, {"filter": {"mode": "lmtp", "listen": f"unix:{listen}",
                                                "lmtp_next": f"unix:{next_path}",
                                                "socket_group": ""}},
                          subcommand="filter", env={"MAIL_CONFIG": str(good)},
                          wait_endpoints=[])
    try:
        with svc:
            wait_for(listen.exists, timeout=20, what="the hook's socket")
            wait_for(lambda: svc.command("check").returncode == 0, timeout=20,
                     what="check passing")
            r = svc.command("check")
            (good / "main.cf").write_text(f"queue_directory = {queue}\n"
                                          f"content_filter = mailtalk:[127.0.0.1]:10025\n")
            bad = svc.command("check")
    finally:
        greeter.close()
    assert f"ok   LMTP hook answers on unix:{listen}" in r.stdout, r.stdout
    assert (f"ok   LMTP server answers on unix:{next_path} ([filter] lmtp_next)"
            in r.stdout), r.stdout
    assert ("ok   Postfix: virtual_transport = lmtp:unix:private/mailtalk-lmtp delivers to "
            "the LMTP hook") in r.stdout, r.stdout
    assert bad.returncode == 1, bad.stdout
    assert (f"FAIL Postfix: no virtual_transport or mailbox_transport delivers to the LMTP "
            f"hook unix:{listen}: set `virtual_transport = lmtp:unix:{listen}`") in bad.stdout
    assert ("FAIL Postfix: content_filter = mailtalk:[127.0.0.1]:10025, but [filter] mode = "
            "\"lmtp\": remove it") in bad.stdout


@pytest.mark.parametrize("main, master, wants", [
    # The indented paste: one parameter swallowed the next.
    (["smtpd_milters = inet:127.0.0.1:8894", "  non_smtpd_milters = inet:127.0.0.1:8894",
      "milter_default_action = accept"], [],
     ["`non_smtpd_milters = inet:127.0.0.1:8894` is not a milter: an indented line "
      "continues the parameter above it",
      "main.cf smtpd_milters has the sending milter: it then runs on port 25 too",
      "non_smtpd_milters lacks the milter"]),
    # A DKIM signer listed before ours on submission.
    (["non_smtpd_milters = inet:127.0.0.1:8894", "milter_default_action = accept"],
     ["submission inet n - n - - smtpd",
      "  -o smtpd_milters=inet:127.0.0.1:8891,inet:127.0.0.1:8894"],
     ["put inet:127.0.0.1:8894 first (a DKIM signer listed before it"]),
])
def test_broken_milter_lines_are_named(tmp_path, monkeypatch, main, master, wants):
    """Postfix's own view (postconf -h, -P) of main.cf and master.cf, not substrings."""
    from mailtalk.cli import check_postfix
    from mailtalk.config import parse_text
    conf = postfix_conf(tmp_path, main, master or None)
    cfg = parse_text('[domains]\nnames = ["a.test"]\n[milter]\nsocket = "inet:8894@127.0.0.1"\n',
                     "t")
    monkeypatch.setenv("MAIL_CONFIG", str(conf))
    text = "\n".join(f"{s} {t}" for s, t in check_postfix.check(cfg))
    for want in wants:
        assert want in text, text
