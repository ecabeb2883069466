"""The harness helpers that need no root, no servers and no sockets."""

from __future__ import annotations

import os
import time
import tomllib

import pytest

from mailtalk.config import parse_text
from support.mailtalk import endpoints, to_toml
from support.message import split_message
from support.postfix_conf import logical_lines
from support.smtp import make_message
from support.wait import wait_for


def test_wait_for_returns_the_truthy_value():
    calls = iter([0, None, "", "done"])
    assert wait_for(lambda: next(calls), timeout=5, interval=0.001) == "done"


def test_wait_for_names_what_it_waited_for_and_the_last_error():
    def boom() -> bool:
        raise ConnectionRefusedError("nobody home")
    with pytest.raises(AssertionError, match=r"waiting for the answer .*nobody home"):
        wait_for(boom, timeout=0.05, interval=0.01, what="the answer")


def test_wait_for_tries_once_more_at_the_deadline():
    start = time.monotonic()
    assert wait_for(lambda: time.monotonic() - start >= 0.05, timeout=0.05, interval=1.0)


def test_split_message_crlf_and_lf():
    assert split_message(b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore") == (b"A: 1\r\nB: 2\r\n",
                                                                     b"body\r\n\r\nmore")
    assert split_message(b"A: 1\n\nbody\n") == (b"A: 1\n", b"body\n")
    assert split_message(b"A: 1\r\n") == (b"A: 1\r\n", b"")


def test_make_message_has_crlf_line_ends_only():
    msg = make_message(body="one\ntwo\r\nthree\n", headers={"X-Test": "1"})
    assert b"\n" not in msg.replace(b"\r\n", b"")
    assert msg.endswith(b"\r\n\r\none\r\ntwo\r\nthree\r\n")


def test_main_cf_snippet_lines_are_joined():
    text = "# comment\na = 1\n\nb = x,\n    y\n  # indented comment\nc=\n"
    assert logical_lines(text) == ["a = 1", "b = x, y", "c="]


def test_to_toml_is_read_by_the_config_loader():
    cfg = {"site": {"state_dir": "/tmp/x \"q\""}, "domains": {"names": ["a.test"]},
           "filter": {"listen": "127.0.10.4:10025", "lookup_timeout": 0.5},
           "dns": {"nameservers": ["127.0.10.53:5353"]}}
    text = to_toml(cfg)
    assert tomllib.loads(text)["site"]["state_dir"] == "/tmp/x \"q\""
    parsed = parse_text(text, "test")
    assert parsed.filter.lookup_timeout == 0.5
    assert str(parsed.filter.listen) == "127.0.10.4:10025"


def test_endpoints_of_a_config():
    cfg = {"milter": {"socket": "inet:9000@127.0.10.5"}, "filter": {"listen": "127.0.10.5:1"},
           "presence": {}}
    assert endpoints(cfg, "run") == ["127.0.10.5:9000", "127.0.10.5:1", "127.0.0.1:8470"]
    assert endpoints({"milter": {"socket": "unix:/run/m.sock"}}, "milter") == ["/run/m.sock"]


def test_wait_for_gives_up_at_once_on_assertion_error():
    calls = []

    def dead() -> bool:
        calls.append(1)
        raise AssertionError("server exited")
    with pytest.raises(AssertionError, match="server exited"):
        wait_for(dead, timeout=30, interval=0.001)
    assert len(calls) == 1


def test_without_root_the_e2e_fixtures_skip_with_a_reason(monkeypatch):
    # Simulated (this suite runs as root): a developer's account is not root.
    from support import dns, postfix, requires
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in postfix.available()
    assert "root" in dns.available()
    with pytest.raises(pytest.skip.Exception, match="Postfix e2e: needs root"):
        requires.require_postfix()
    with pytest.raises(pytest.skip.Exception, match="DNS e2e"):
        requires.require_dnsmasq()
