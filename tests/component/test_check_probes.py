"""`mailtalk check`'s milter probe against stand-ins on loopback: a milter that answers
the option negotiation (unix socket), an SMTP server where a milter should be, no
socket, and a plain file."""

from __future__ import annotations

import asyncio

from aiosmtpd.controller import Controller

from mailtalk.cli import check as ops
from support.fake_milter import fake_milter
from support.smtp_sink import AcceptAll
from support.wait import free_port

HOST = "127.0.14.20"


async def test_milter_probe_over_unix_socket_and_a_wrong_server(tmp_path):
    path = tmp_path / "milter.sock"
    server = await asyncio.start_unix_server(fake_milter, str(path))
    smtp = Controller(AcceptAll(), hostname=HOST, port=free_port(HOST))
    smtp.start()
    try:
        assert await asyncio.to_thread(ops._probe_milter, f"unix:{path}") is None
        err = await asyncio.to_thread(ops._probe_milter, f"inet:{smtp.port}@{HOST}")
        assert err == "something answers, but not a milter"
        missing = await asyncio.to_thread(ops._probe_milter, f"unix:{tmp_path}/none.sock")
        assert missing == f"no socket at {tmp_path}/none.sock"
        (tmp_path / "plain").write_text("")
        plain = await asyncio.to_thread(ops._probe_milter, f"unix:{tmp_path}/plain")
        assert plain == f"{tmp_path}/plain is not a socket"
    finally:
        smtp.stop()
        server.close()
