"""`mailtalk check`'s Postfix side: the names Postfix may use for the milter's socket."""

from __future__ import annotations


def test_postfix_names_for_the_milter_socket():
    from mailtalk.cli.check_postfix import _milter_forms, _postfix_form
    q = "/var/spool/postfix"
    sock = "unix:/var/spool/postfix/mailtalk/milter.sock"
    assert _postfix_form(sock, q) == "unix:mailtalk/milter.sock"     # as sender-main.cf says
    assert {"unix:mailtalk/milter.sock", "unix:/mailtalk/milter.sock",
            "unix:/var/spool/postfix/mailtalk/milter.sock"} <= _milter_forms(sock, q)
    assert _postfix_form("unix:/run/mailtalk.sock", q) == "unix:/run/mailtalk.sock"
    assert _postfix_form("inet:8894@127.0.0.1", q) == "inet:127.0.0.1:8894"
    assert "inet:localhost:8894" in _milter_forms("inet:8894@127.0.0.1", q)
    assert _milter_forms("inet:8894", q) >= {"inet:127.0.0.1:8894", "inet:localhost:8894"}
