"""End to end on the sender's side: a real private Postfix with SASL submission
(Cyrus sasldb), the Postfix lines of deploy/postfix/sender-*.cf, and the real
`mailtalk run` (milter + presence service) as a subprocess. swaks logs in and
sends; the mail is read back from a Maildir; the record reaches the presence
service through the outbox."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from mailtalk.mailid import MailIds
from support import free_port, wait_port
from support.mailtalk import MailtalkService
from support.postfix import PostfixInstance, chmod_chain, header_values, split_message
from support.requires import require_postfix, require_swaks
from support.smtp import make_message, swaks


ADDR = "127.0.11.5"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "postfix"
USERS = {"alice@a.test": "alice-pw"}
OURS = ("X-Messenger-Account", "X-Mail-ID", "X-Sender-Online")


def sender_master(mta: PostfixInstance, milter: str, port: int) -> str:
    """deploy/postfix/sender-master.cf's 587 service, adapted to a test: our address
    and port instead of the well-known submission port, no chroot (a private
    instance has no jail), no TLS (no certificate here), the test's milter address."""
    master = (DEPLOY / "sender-master.cf").read_text()
    master = master[:master.index("submissions inet")]          # 587 only
    master = master.replace("inet:127.0.0.1:8894", milter)
    master = re.sub(r"^submission inet n\s+-\s+y", f"{mta.address}:{port} inet n - n",
                    master, flags=re.M)
    master = "".join(line for line in master.splitlines(keepends=True)
                     if "smtpd_tls_" not in line)
    assert f"smtpd_milters={milter}" in master
    return master


def apply_sender_snippets(mta: PostfixInstance, milter: str, port: int, tmp: Path) -> None:
    """deploy/postfix/sender-*.cf as a postmaster applies them (adapted: see above)."""
    main = (DEPLOY / "sender-main.cf").read_text().replace("inet:127.0.0.1:8894", milter)
    (tmp / "sender-main.cf").write_text(main)
    mta.apply_snippet(tmp / "sender-main.cf")
    (tmp / "sender-master.cf").write_text(sender_master(mta, milter, port))
    mta.apply_snippet(tmp / "sender-master.cf")


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[PostfixInstance, MailtalkService, int]]:
    """Module-scoped: starting Postfix costs seconds."""
    require_postfix()
    require_swaks()
    base = Path(tempfile.mkdtemp(prefix="mailtalk-milter-e2e-"))
    chmod_chain(base)
    milter_port, presence_port, submit_port = (free_port(ADDR) for _ in range(3))
    svc = MailtalkService(base, {
        "domains": {"names": ["a.test"]},
        "milter": {"socket": f"inet:{milter_port}@{ADDR}", "outbox_retry_max": 1},
        "presence": {"listen": f"{ADDR}:{presence_port}",
                     "public_url": f"http://{ADDR}:{presence_port}"},
    }, subcommand="run")
    mta = PostfixInstance(base, "a", ADDR, "a.test")
    try:
        svc.start()
        mta.enable_sasl_submission(users=USERS)     # SASL set-up (and a plain 587 we skip)
        apply_sender_snippets(mta, f"inet:{ADDR}:{milter_port}", submit_port, base)
        mta.local_maildir(["a.test"])
        mta.start()
        yield mta, svc, submit_port
    finally:
        mta.stop()
        svc.stop()
    shutil.rmtree(base, ignore_errors=True)


FORGED = {"X-Mail-ID": "forgedforgedforgedforged00", "x-messenger-account": "mallory@a.test",
          "X-SENDER-ONLINE": "yes; account=mallory@a.test; status=online",
          "X-Messenger-Account": "eve@a.test"}
BODY = ("Grüße, Bob.\r\n" + "y" * 900 + "\r\n.leading dot\r\ntrailing   \r\n").encode()
MIME = {"MIME-Version": "1.0", "Content-Type": "text/plain; charset=utf-8",
        "Content-Transfer-Encoding": "8bit"}


def own_headers_without_ours(raw: bytes) -> bytes:
    head, _ = split_message(raw)
    lines = head.split(b"\n")
    keep, skip = [], False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not skip:
                keep.append(line)
            continue
        skip = line.split(b":", 1)[0].decode().lower() in {h.lower() for h in OURS}
        if not skip:
            keep.append(line)
    return b"\n".join(keep)


def test_authenticated_submission_gets_both_headers_and_is_recorded(site) -> None:
    mta, svc, port = site
    msg = make_message(from_="alice@a.test", to="carol@a.test", subject="e2e milter",
                       body=BODY, headers={**MIME, **FORGED}, message_id="<e2e-1@a.test>")
    code, transcript = swaks(ADDR, port, to="carol@a.test", from_="alice@a.test",
                             auth=("alice@a.test", USERS["alice@a.test"]), data=msg)
    assert code == 0, transcript
    got = mta.wait_delivered("carol@a.test", 1)[-1]
    assert header_values(got, "X-Messenger-Account") == ["alice@a.test"]
    (mail_id,) = header_values(got, "X-Mail-ID")
    key = (svc.state_dir / "site.key").read_bytes()
    assert MailIds(key, 30).verify("alice@a.test", mail_id)
    assert header_values(got, "X-Sender-Online") == []
    # Bytes unchanged apart from our header lines: the body, and every other header.
    head, body = split_message(got)
    assert body == BODY.replace(b"\r\n", b"\n")
    assert own_headers_without_ours(got).endswith(
        own_headers_without_ours(msg.replace(b"\r\n", b"\n")))
    # The record reached the presence service (through the outbox).
    svc.wait_log(re.escape(f"mail {mail_id} of alice@a.test recorded"), timeout=15)


def test_unauthenticated_mail_loses_forged_headers_and_gets_none(site) -> None:
    mta, svc, _ = site
    msg = make_message(from_="script@a.test", to="dave@a.test", subject="from a script",
                       body=BODY, headers={**MIME, **FORGED}, message_id="<e2e-2@a.test>")
    mta.sendmail(msg, "script@a.test", ["dave@a.test"])     # non_smtpd_milters
    got = mta.wait_delivered("dave@a.test", 1)[-1]
    for name in OURS:
        assert header_values(got, name) == [], name
    assert split_message(got)[1] == BODY.replace(b"\r\n", b"\n")
    assert own_headers_without_ours(got).endswith(
        own_headers_without_ours(msg.replace(b"\r\n", b"\n")))


def test_unix_socket_with_the_documented_relative_path(site, tmp_path: Path) -> None:
    """docs/milter.md: the socket under the queue directory, `unix:mailtalk/milter.sock`
    in Postfix (relative to the queue directory: right chrooted or not), mode 0660
    and group postfix: smtpd (user postfix) gets through."""
    mta, svc, _ = site
    sock = mta.queue_dir / "mailtalk" / "milter.sock"
    unix_svc = MailtalkService(tmp_path, {
        "site": {"secret_file": str(svc.state_dir / "site.key")},
        "domains": {"names": ["a.test"]},
        "milter": {"socket": f"unix:{sock}", "presence_api": f"http://{ADDR}:1"},
    }, subcommand="milter", name="unix-milter").start()
    try:
        port = free_port(ADDR)
        mta.master_add(sender_master(mta, "unix:mailtalk/milter.sock", port))
        mta.reload()
        wait_port(ADDR, port)
        msg = make_message(from_="alice@a.test", to="erin@a.test", subject="over unix",
                           body=BODY, headers=MIME, message_id="<e2e-3@a.test>")
        code, transcript = swaks(ADDR, port, to="erin@a.test", from_="alice@a.test",
                                 auth=("alice@a.test", USERS["alice@a.test"]), data=msg)
        assert code == 0, transcript
        got = mta.wait_delivered("erin@a.test", 1)[-1]
        assert header_values(got, "X-Messenger-Account") == ["alice@a.test"]
        (mail_id,) = header_values(got, "X-Mail-ID")
        key = (svc.state_dir / "site.key").read_bytes()
        assert MailIds(key, 30).verify("alice@a.test", mail_id)
        assert sock.stat().st_mode & 0o777 == 0o660
    finally:
        unix_svc.stop()


def test_milter_killed_in_a_burst_every_mail_is_delivered(site) -> None:
    """SIGKILL of `mailtalk run` (the milter) while alice sends 20 mails: Postfix goes on
    as milter_default_action = accept says; every mail is delivered once, none refused
    or bounced (those sent while it was down carry no claim). Runs last: it restarts
    the module's service."""
    import signal
    import threading
    from support.smtp import smtp_send
    from support.wait import wait_for
    mta, svc, port = site
    mids = [f"<burst-{i}@a.test>" for i in range(20)]
    errors: list[BaseException] = []

    def send_all() -> None:
        try:
            for i, mid in enumerate(mids):
                smtp_send(ADDR, port, make_message(to="bob@a.test", subject=f"burst {i}",
                                                   message_id=mid),
                          sender="alice@a.test", rcpts=["bob@a.test"],
                          auth=("alice@a.test", USERS["alice@a.test"]))
        except BaseException as e:       # reported below
            errors.append(e)
    sender = threading.Thread(target=send_all)
    sender.start()
    wait_for(lambda: len(mta.delivered("bob@a.test")) >= 3, timeout=30,
             what="a few mails delivered before the kill")
    assert svc.proc is not None
    svc.proc.send_signal(signal.SIGKILL)
    svc.proc.wait(10)
    svc.proc = None
    sender.join(120)
    assert not errors, errors
    svc.start()                                   # back for the module's teardown
    def ids() -> list[str]:
        return [header_values(m, "Message-ID")[0] for m in mta.delivered("bob@a.test")]
    wait_for(lambda: all(mid in ids() for mid in mids), timeout=60, what="all 20 delivered")
    got = ids()
    assert all(got.count(mid) == 1 for mid in mids), got
    assert "status=bounced" not in mta.maillog()
    unclaimed = [m for m in mta.delivered("bob@a.test")
                 if header_values(m, "Message-ID")[0] in mids and not header_values(m, "X-Mail-ID")]
    print(f"milter killed in a burst of 20: {len(unclaimed)} sent while it was down")
