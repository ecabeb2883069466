"""`mailtalk presence` as a real process: start, schema, API, links, clean stop on SIGTERM."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from mailtalk.links import LinkTokens
from mailtalk.links import LinkTokens
from mailtalk.mailid import MailIds, outbox_api_token
from support.mailtalk import MailtalkService
from support.wait import free_port

HOST = "127.0.12.3"
# No proxy from the environment: the service is on loopback.
OPEN = urllib.request.build_opener(urllib.request.ProxyHandler({})).open


def post(url: str, body: dict, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {
        "Content-Type": "application/json", **(headers or {})})
    try:
        with OPEN(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_mailtalk_presence_process(tmp_path: Path) -> None:
    port = free_port(HOST)
    base = f"http://{HOST}:{port}"
    svc = MailtalkService(tmp_path, {
        "domains": {"names": ["a.test"]},
        "presence": {"listen": f"{HOST}:{port}", "public_url": base,
                     "database": f"sqlite:///{tmp_path}/presence.sqlite3"},
    }, subcommand="presence")
    r = svc.command("user", "add", "alice@a.test", "--password-stdin", input="a good password\n")
    assert r.returncode == 0, r.stderr
    svc.start()
    try:
        key = (svc.state_dir / "site.key").read_bytes()
        mid = MailIds(key, 30).issue("alice@a.test")
        status, body = post(base + "/api/v1/mails", {
            "mail_id": mid, "account": "alice@a.test", "message_id": "<1@a.test>",
            "subject": "Hi", "date": "2026-11-29T07:00:00Z", "recipients": ["bob@b.test"],
            "body_text": "Hello", "queue_id": "4QID"},
            {"Authorization": "Bearer " + outbox_api_token(key)})
        assert status == 201, body
        status, body = post(base + "/api/v1/lookup", {
            "account": "alice@a.test", "mail_id": mid, "message_id": "<1@a.test>",
            "recipients": ["bob@b.test"]})
        # Presence for a valid Mail-ID; no link for an unsigned lookup (signed ones need
        # a DNS server: tests/e2e).
        assert status == 200 and body["status"] == "offline" and body["links"] == {}
        link = LinkTokens(key, base, 30).url(mid, "alice@a.test", "bob@b.test")
        assert link is not None and link.startswith(base + "/c/")
        with OPEN(link, timeout=10) as page:
            assert page.status == 200 and b"Hello" in page.read()
        with OPEN(base + "/openapi.json", timeout=10) as doc:
            assert "/api/v1/lookup" in json.loads(doc.read())["paths"]
        svc.wait_log(r"4QID: mail \S+ of alice@a.test recorded")
    finally:
        assert svc.stop() == 0
    assert (tmp_path / "presence.sqlite3").exists()


def test_postgresql_problems_are_one_clear_line(tmp_path: Path) -> None:
    """A server off this host without a password, and one that does not answer."""
    port = free_port(HOST)
    for database, said in (
            ("postgresql://db/mailtalk", "[presence] database: a PostgreSQL server off this "
                                         "host needs a password"),
            (f"postgresql://u:p@{HOST}:{free_port(HOST)}/mailtalk",
             "[presence] database: cannot connect to PostgreSQL")):
        svc = MailtalkService(tmp_path, {
            "domains": {"names": ["a.test"]},
            "presence": {"listen": f"{HOST}:{port}", "database": database},
        }, subcommand="presence")
        r = svc.command("presence", timeout=60)
        assert r.returncode == 2 and said in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
