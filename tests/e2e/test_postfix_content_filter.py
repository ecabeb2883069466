"""The filter behind a real private Postfix, with deploy/postfix/receiver-*.cf applied as
written (only addresses and ports overridden), run as the real `mailtalk filter` command:
Postfix -> content_filter -> filter -> re-injection smtpd -> Maildir. When the filter is
down Postfix defers; after a restart every mail arrives exactly once, none bounced."""

from __future__ import annotations

import re
from pathlib import Path

from support import free_port, wait_for
from support.postfix import header_values, split_message
from support.smtp import make_message, smtp_send


ROOT = Path(__file__).resolve().parents[2]
MX, FILTER = "127.0.13.10", "127.0.13.11"
FORGED = ("yes; account=mallory@evil.test; status=online; "
          "checked=2026-01-01T00:00:00Z; chat=<https://evil.test/c/x>")


def _receiver(postfix_factory, filter_port: int):
    mx = postfix_factory("b", MX, "b.test")
    mx.local_maildir(["b.test"])
    mx.apply_snippet(ROOT / "deploy/postfix/receiver-main.cf")
    mx.apply_snippet(ROOT / "deploy/postfix/receiver-master.cf")
    reinject = free_port(MX)
    mx.master_replace("127.0.0.1:10026", f"{MX}:{reinject}")
    mx.postconf(content_filter=f"mailtalk:[{FILTER}]:{filter_port}")
    return mx, reinject


def test_postfix_content_filter_round_trip_and_restart(postfix_factory, mailtalk_factory) -> None:
    filter_port = free_port(FILTER)
    mx, reinject = _receiver(postfix_factory, filter_port)
    config = {"filter": {"listen": f"{FILTER}:{filter_port}", "reinject": f"{MX}:{reinject}",
                         "lookup_timeout": 0.5}}
    flt = mailtalk_factory(config, subcommand="filter", name="filter1")
    mx.start()

    body = ("Grüße, 8-bit body\r\n" + "long line " * 90 + "\r\n").encode()
    msg1 = make_message(to=["bob@b.test", "carol@b.test"], subject="one", body=body,
                        message_id="<one@a.test>", headers={"X-Sender-Online": FORGED})
    smtp_send(MX, mx.smtp_port, msg1, sender="alice@a.test", rcpts=["bob@b.test", "carol@b.test"])
    for rcpt in ("bob@b.test", "carol@b.test"):
        (got,) = mx.wait_delivered(rcpt, 1)
        values = header_values(got, "X-Sender-Online")
        assert values == [], values         # no claim: no header; the forged one removed
        assert "evil" not in got.decode(errors="replace")
        assert split_message(got)[1] == body.replace(b"\r\n", b"\n")
    # The filter logged with Postfix's queue ID (from XFORWARD IDENT).
    qid = re.search(r"smtpd\[\d+\]: ([0-9A-F]+): client=", mx.maillog()).group(1)
    assert re.search(rf"{qid}: .*re-injected", flt.log()), flt.log_tail()
    assert f"orig_queue_id={qid}" in mx.maillog()     # XFORWARD reached the re-injection

    # Filter down: Postfix defers (4xx / connection refused), nothing bounces.
    flt.stop()
    msg2 = make_message(to="bob@b.test", subject="two", message_id="<two@a.test>")
    smtp_send(MX, mx.smtp_port, msg2, sender="alice@a.test", rcpts=["bob@b.test"])
    mx.wait_log(r"mailtalk/smtp\[\d+\]: \w+: to=<bob@b.test>.*status=deferred", timeout=20)
    assert mx.queue(), "the mail should wait in the queue"
    assert len(mx.delivered("bob@b.test")) == 1

    mailtalk_factory(config, subcommand="filter", name="filter2")
    got = mx.wait_delivered("bob@b.test", 2)
    mx.wait_queue_empty()
    got = mx.delivered("bob@b.test")
    assert [header_values(m, "Message-ID") for m in got] == [["<one@a.test>"], ["<two@a.test>"]]
    assert "status=bounced" not in mx.maillog()
    wait_for(lambda: not mx.queue(), timeout=5, what="an empty queue")
    assert len(mx.delivered("bob@b.test")) == 2 and len(mx.delivered("carol@b.test")) == 1


def test_a_next_hop_size_refusal_passes_as_it_is(postfix_factory, mailtalk_factory) -> None:
    """The re-injection smtpd's message_size_limit is just below the mail (the smtpd
    that receives it takes it): its `552 5.3.4` reaches Postfix's `mailtalk` transport
    as it is, which bounces the mail at once. A 4xx of ours would keep it deferred for
    days, and the filter's own size limit was not exceeded, so it must not say so."""
    filter_port = free_port(FILTER)
    mx, reinject = _receiver(postfix_factory, filter_port)
    mx.master_replace("  -o syslog_name=postfix/reinject\n",
                      "  -o syslog_name=postfix/reinject\n  -o message_size_limit=20000\n")
    flt = mailtalk_factory({"filter": {"listen": f"{FILTER}:{filter_port}",
                                       "reinject": f"{MX}:{reinject}"}},
                           subcommand="filter", name="filter-size")
    mx.start()
    big = make_message(to="bob@b.test", subject="too big for the next hop",
                       message_id="<size@a.test>", body="x" * 70 + "\r\n" + ("y" * 76 + "\r\n") * 400)
    smtp_send(MX, mx.smtp_port, big, sender="alice@a.test", rcpts=["bob@b.test"])
    line = mx.wait_log(r"mailtalk/smtp\[\d+\]: \w+: to=<bob@b.test>.*status=\w+.*", 30).group(0)
    assert "status=bounced" in line and "552 5.3.4" in line, line
    assert "max_message_size" not in flt.log(), flt.log_tail()
    assert mx.delivered("bob@b.test") == []


def _burst(mx, n: int, tag: str) -> list[str]:
    """n mails to bob and carol straight into Postfix (no claim: no lookup)."""
    mids = [f"<{tag}-{i}@a.test>" for i in range(n)]
    for i, mid in enumerate(mids):
        smtp_send(MX, mx.smtp_port, make_message(to=["bob@b.test", "carol@b.test"],
                                                 subject=f"{tag} {i}", message_id=mid),
                  sender="alice@a.test", rcpts=["bob@b.test", "carol@b.test"])
    return mids


def _copies(mx, mids: list[str]) -> dict[tuple[str, str], int]:
    """(Message-ID, recipient) -> copies delivered, once every mail arrived (flushing)."""
    def counted() -> dict[tuple[str, str], int] | None:
        out = {}
        for rcpt in ("bob@b.test", "carol@b.test"):
            ids = [header_values(m, "Message-ID")[0] for m in mx.delivered(rcpt)]
            out.update({(mid, rcpt): ids.count(mid) for mid in mids})
        if all(out.values()):
            return out
        mx.flush()
        return None
    return wait_for(counted, timeout=60, interval=0.3, what="every mail at both mailboxes")


def test_filter_killed_mid_burst(e2e_dir, postfix_factory) -> None:
    """SIGTERM mid-burst: the mails in flight finish, the rest wait in Postfix's queue:
    each copy exactly once. SIGKILL mid-burst: nothing lost, nothing bounced; a copy
    re-injected just before the kill may come twice (Postfix's own window, between the
    re-injection's 250 and ours: docs/receiving.md); counted, never lost."""
    import signal
    from support.mailtalk import MailtalkService
    filter_port = free_port(FILTER)
    mx, reinject = _receiver(postfix_factory, filter_port)
    config = {"filter": {"listen": f"{FILTER}:{filter_port}", "reinject": f"{MX}:{reinject}"}}
    mx.start()
    for sig, tag in ((signal.SIGTERM, "term"), (signal.SIGKILL, "kill")):
        flt = MailtalkService(e2e_dir, config, subcommand="filter", name=f"filter-{tag}")
        flt.start()
        mids = _burst(mx, 30, tag)
        wait_for(lambda: flt.log().count("re-injected") >= 5, timeout=30,
                 what="a few mails through the filter")
        assert flt.proc is not None
        flt.proc.send_signal(sig)
        status = flt.proc.wait(20)
        assert sig == signal.SIGKILL or status == 0, flt.log_tail()
        assert "Traceback" not in flt.log(), flt.log_tail()
        after = MailtalkService(e2e_dir, config, subcommand="filter", name=f"after-{tag}")
        after.start()
        try:
            copies = _copies(mx, mids)
            mx.wait_queue_empty()
        finally:
            assert after.stop() == 0
        twice = sum(n - 1 for n in copies.values())
        if sig == signal.SIGTERM:
            assert twice == 0, {k: n for k, n in copies.items() if n > 1}
        else:
            print(f"filter killed in a burst of 30 mails x 2 recipients: {twice} duplicate(s)")
    assert "status=bounced" not in mx.maillog()
