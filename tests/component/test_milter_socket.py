"""milter_socket.tune() on real sockets, opened the way libmilter opens them: TCP_NODELAY
reaches accepted connections; a unix socket gets its mode and group."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def test_tcp_nodelay_set_on_the_new_listener_reaches_accepted_sockets() -> None:
    """milter_socket.tune() on a listener opened the way libmilter does: the sockets
    it accepts have TCP_NODELAY (Linux copies it from the listener)."""
    import socket

    from mailtalk_milter import milter_socket
    before = milter_socket.listening_fds()
    with socket.socket() as lst:
        lst.bind(("127.0.11.8", 0))
        lst.listen()
        port = lst.getsockname()[1]
        milter_socket.tune(f"inet:{port}@127.0.11.8", before, "postfix")
        with socket.create_connection(("127.0.11.8", port)) as client:
            conn, _ = lst.accept()
            with conn:
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert client is not None


@pytest.mark.parametrize("group,mode", [("", 0o666), ("postfix", 0o660)])
def test_unix_socket_mode_and_group(tmp_path: Path, group: str, mode: int) -> None:
    import grp
    import socket

    from mailtalk_milter import milter_socket
    if group and os.geteuid() != 0:
        pytest.skip("chown to another group needs root")
    try:
        gid = grp.getgrnam(group).gr_gid if group else None
    except KeyError:
        pytest.skip(f"no group {group} here")
    path = tmp_path / "run" / "m.sock"
    milter_socket.prepare(f"unix:{path}")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        milter_socket.tune(f"unix:{path}", set(), group)
        st = path.stat()
        assert st.st_mode & 0o777 == mode
        if gid is not None:
            assert st.st_gid == gid
