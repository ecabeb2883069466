"""The harness against real sockets and the real `mailtalk` command: free ports and
waiting for them; a service that dies at start; start and SIGTERM stop."""

from __future__ import annotations

import socket

import pytest

from support.mailtalk import MailtalkService
from support.wait import free_port, port_open, wait_port


def test_free_port_and_wait_port():
    port = free_port("127.0.10.1")
    assert not port_open("127.0.10.1", port)
    with socket.socket() as s:
        s.bind(("127.0.10.1", port))
        s.listen()
        wait_port("127.0.10.1", port, timeout=2)
    with pytest.raises(AssertionError, match="127.0.10.1"):
        wait_port("127.0.10.1", port, timeout=0.1)


def test_a_service_that_dies_at_start_fails_with_its_output(tmp_path):
    # A bad value stops mailtalk at start-up; start() must say so, not hang.
    service = MailtalkService(tmp_path, {"filter": {"listen": "not-a-hostport"}})
    with pytest.raises(AssertionError, match=r"(?s)exited with 2.*\[filter\] listen"):
        service.start(timeout=30)
    assert not service.running()


def test_a_real_service_starts_and_stops_on_sigterm(mailtalk_factory):
    # The content filter needs no root and no other server to start: the harness's
    # start (wait for the listen port) and stop (SIGTERM, exit 0) on the real thing.
    port = free_port("127.0.10.6")
    service = mailtalk_factory({"filter": {"listen": f"127.0.10.6:{port}",
                                           "reinject": "127.0.10.6:9"}},
                               subcommand="filter")
    assert port_open("127.0.10.6", port)
    assert service.stop() == 0
    assert not service.running()
    assert not port_open("127.0.10.6", port)
