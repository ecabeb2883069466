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


def test_check_says_when_a_key_is_readable_by_others(tmp_path):
    import asyncio
    import os
    from mailtalk.cli import check
    from mailtalk.config import parse_text
    cfg = parse_text(f'[site]\nstate_dir = "{tmp_path}"\n', "t")
    key = tmp_path / "site.key"
    key.write_bytes(b"k" * 32)
    os.chmod(key, 0o640)
    found = asyncio.run(check._check_config(cfg))
    assert any(f.state == "FAIL" and "[site] secret_file" in f.text for f in found)
    os.chmod(key, 0o600)
    assert not [f for f in asyncio.run(check._check_config(cfg))
                if f.state == "FAIL" and "secret_file" in f.text]
