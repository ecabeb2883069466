"""Proves the harness itself, with no mailtalk at all: two private Postfix
instances (127.0.10.2 = a.test, 127.0.10.3 = b.test), SASL submission, Maildir
delivery, relaying between the two, and dnsmasq answering dnspython."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from support.message import header_values, split_message
from support.postfix import PostfixInstance, chmod_chain, start_all, wait_stopped
from support.requires import require_postfix, require_swaks
from support.smtp import make_message, smtp_send, swaks
from support.wait import port_open

A_ADDR, B_ADDR = "127.0.10.2", "127.0.10.3"
USERS = {"alice@a.test": "alice-pw", "dave": "dave-pw"}


@pytest.fixture(scope="module")
def mta() -> Iterator[tuple[PostfixInstance, PostfixInstance]]:
    """a.test (submission with SASL, local Maildirs, relays b.test to B) and b.test.
    Module-scoped: starting and stopping Postfix costs seconds."""
    require_postfix()
    require_swaks()
    base = Path(tempfile.mkdtemp(prefix="mailtalk-infra-"))
    chmod_chain(base)
    a = PostfixInstance(base, "a", A_ADDR, "a.test")
    b = PostfixInstance(base, "b", B_ADDR, "b.test")
    try:
        a.enable_sasl_submission(users=USERS)
        a.local_maildir(["a.test"])
        a.relay_to("b.test", B_ADDR, b.smtp_port)
        b.local_maildir(["b.test"])
        start_all(a, b)
        yield a, b
    finally:
        wait_stopped([a, b])
    shutil.rmtree(base, ignore_errors=True)


# 8-bit UTF-8, a line longer than 998 octets would be refused; 900 is long but legal,
# trailing spaces and a leading dot (SMTP dot-stuffing must round-trip).
BODY = ("Grüße aus Tokio: 東京\r\n"
        + "x" * 900 + "\r\n"
        + "trailing spaces   \r\n"
        + ".leading dot\r\n"
        + "\r\n"
        + "last line\r\n").encode()


def test_authenticated_submission_delivered_byte_for_byte(mta):
    a, _ = mta
    msg = make_message(from_="alice@a.test", to="carol@a.test", subject="harness check",
                       body=BODY, headers={"Content-Type": "text/plain; charset=utf-8",
                                           "Content-Transfer-Encoding": "8bit",
                                           "MIME-Version": "1.0"},
                       message_id="<infra-1@a.test>")
    code, transcript = swaks(A_ADDR, a.submission_port, to="carol@a.test",
                             from_="alice@a.test", auth=("alice@a.test", USERS["alice@a.test"]),
                             data=msg)
    assert code == 0, transcript
    assert "235 2.7.0 Authentication successful" in transcript

    got = a.wait_delivered("carol@a.test", 1)
    head, body = split_message(got[-1])
    # Maildir stores LF line ends; apart from that, the body is the very bytes sent.
    assert body == BODY.replace(b"\r\n", b"\n")
    # The message's own headers arrive unchanged, below the ones Postfix adds.
    own_head = split_message(msg)[0].replace(b"\r\n", b"\n")
    assert head.endswith(own_head)
    assert "ESMTPA" in header_values(got[-1], "Received")[0]   # it was an authenticated submission


def test_login_without_at_gets_the_instance_domain(mta):
    a, _ = mta
    code, transcript = swaks(A_ADDR, a.submission_port, to="carol@a.test", from_="dave@a.test",
                             auth=("dave", USERS["dave"]), body="hi from dave")
    assert code == 0, transcript
    a.wait_log(r"sasl_username=dave\b")


def test_unauthenticated_relay_is_refused(mta):
    a, _ = mta
    # On the MX port, without log-in: a.test is ours, b.test is not.
    code, transcript = swaks(A_ADDR, a.smtp_port, to="bob@b.test", from_="mallory@evil.test")
    assert code == 24, transcript                                 # refused at RCPT
    assert "554 5.7.1 <bob@b.test>: Relay access denied" in transcript
    # On the submission port, without log-in, and with a wrong password.
    code, transcript = swaks(A_ADDR, a.submission_port, to="bob@b.test")
    assert code == 24, transcript
    code, transcript = swaks(A_ADDR, a.submission_port, to="bob@b.test",
                             auth=("alice@a.test", "wrong"))
    assert code == 28, transcript                                 # AUTH failed
    assert "535 5.7.8" in transcript


def test_mail_is_relayed_to_the_other_instance(mta):
    a, b = mta
    msg = make_message(from_="alice@a.test", to=["bob@b.test", "erin@b.test"],
                       subject="relay", body="over two hops\r\n")
    refused = smtp_send(A_ADDR, a.submission_port, msg, sender="alice@a.test",
                        rcpts=["bob@b.test", "erin@b.test"],
                        auth=("alice@a.test", USERS["alice@a.test"]))
    assert refused == {}
    for rcpt in ("bob@b.test", "erin@b.test"):
        got = b.wait_delivered(rcpt, 1)
        assert split_message(got[-1])[1] == b"over two hops\n"
        # It came from a's address, which smtp_bind_address set.
        assert f"(unknown [{A_ADDR}])" in header_values(got[-1], "Received")[0]
    a.wait_queue_empty()
    assert b.delivered("carol@b.test") == []


def test_dnsmasq_answers_dnspython(dns_factory):
    import dns.resolver
    server = dns_factory("127.0.10.53", {
        "_mailtalk.a.test": "v=mailtalk1; api=http://127.0.10.2:8470",
        "multi.test": ["one", "two"]})
    resolver = server.resolver()
    answer = resolver.resolve("_mailtalk.a.test", "TXT")
    assert [b"".join(r.strings) for r in answer] == [b"v=mailtalk1; api=http://127.0.10.2:8470"]
    assert resolver.resolve("multi.test", "TXT")[0].strings == (b"one", b"two")
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("_mailtalk.b.test", "TXT")
    # Restart with other records: same address and port, new answer.
    server.set_records({"_mailtalk.b.test": "v=mailtalk1; api=http://127.0.10.3:8470"})
    answer = server.resolver().resolve("_mailtalk.b.test", "TXT")
    assert answer[0].strings == (b"v=mailtalk1; api=http://127.0.10.3:8470",)


def test_restart_keeps_the_queue_and_stop_leaves_nothing(postfix_factory):
    # A mail deferred while the next hop is down waits in the queue across a
    # restart of the sending instance and is delivered once the hop is up.
    a = postfix_factory("qa", "127.0.10.4", "qa.test")
    b = postfix_factory("qb", "127.0.10.5", "qb.test")
    a.relay_to("qb.test", b.address, b.smtp_port)
    a.postconf(mynetworks="127.0.0.0/8")           # let the test client relay
    b.local_maildir(["qb.test"])
    a.start()
    smtp_send(a.address, a.smtp_port, make_message(to="zoe@qb.test", body="queued\r\n"),
              sender="x@qa.test", rcpts=["zoe@qb.test"])
    a.wait_log(r"to=<zoe@qb.test>.*status=deferred")
    a.stop()
    assert a.master_pid() is None
    assert a.queue(), "the deferred mail must still be queued"
    start_all(a, b)
    (got,) = b.wait_delivered("zoe@qb.test", 1, flush_also=[a])
    assert got.endswith(b"\n\nqueued\n")
    a.wait_queue_empty()
    b.stop()
    assert b.master_pid() is None
    assert not any(port_open(h, p) for h, p in b.inet_services())
