"""Helpers of the two-site end-to-end test (engineer "discovery"): the Postfix lines
of deploy/postfix applied to private instances, and reading X-Sender-Online back."""

from __future__ import annotations

import re
from pathlib import Path

from support.postfix import PostfixInstance, header_values
from support.wait import wait_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "postfix"


def apply_sender_snippets(mta: PostfixInstance, milter: str, port: int, tmp: Path) -> None:
    """deploy/postfix/sender-*.cf as a postmaster applies them, adapted to a private
    instance: our address and port for submission, no chroot (no jail here), no TLS
    (no certificate here), the test's milter address, no port 465 service."""
    main = (DEPLOY / "sender-main.cf").read_text().replace("inet:127.0.0.1:8894", milter)
    (tmp / "sender-main.cf").write_text(main)
    mta.apply_snippet(tmp / "sender-main.cf")
    master = (DEPLOY / "sender-master.cf").read_text()
    master = master[:master.index("submissions inet")]
    master = master.replace("inet:127.0.0.1:8894", milter)
    master = re.sub(r"^submission inet n\s+-\s+y", f"{mta.address}:{port} inet n - n",
                    master, flags=re.M)
    master = "".join(line for line in master.splitlines(keepends=True)
                     if "smtpd_tls_" not in line)
    assert f"smtpd_milters={milter}" in master, "sender-master.cf changed its milter line"
    (tmp / "sender-master.cf").write_text(master)
    mta.apply_snippet(tmp / "sender-master.cf")


def apply_receiver_snippets(mta: PostfixInstance, filter_addr: str, reinject_port: int) -> None:
    """deploy/postfix/receiver-*.cf as written; only the addresses are the test's."""
    mta.apply_snippet(DEPLOY / "receiver-main.cf")
    mta.apply_snippet(DEPLOY / "receiver-master.cf")
    mta.master_replace("127.0.0.1:10026", f"{mta.address}:{reinject_port}")
    mta.postconf(content_filter=f"mailtalk:[{filter_addr.rpartition(':')[0]}]:"
                                f"{filter_addr.rpartition(':')[2]}")


def online(raw: bytes) -> list[tuple[str, dict[str, str]]]:
    """Every X-Sender-Online of a delivered mail as (state, {param: value})."""
    out = []
    for value in header_values(raw, "X-Sender-Online"):
        value = re.sub(r"\s*\n\s*", " ", value).strip()
        state, *params = [p.strip() for p in value.split(";")]
        out.append((state, dict(p.split("=", 1) for p in params if "=" in p)))
    return out


def wait_mail(mta: PostfixInstance, rcpt: str, message_id: str, timeout: float = 30.0,
              also_flush: tuple[PostfixInstance, ...] = ()) -> list[bytes]:
    """Wait until the mail with this Message-ID reached `rcpt`; every copy of it."""
    def got() -> list[bytes] | None:
        found = [m for m in mta.delivered(rcpt) if header_values(m, "Message-ID") == [message_id]]
        if found:
            return found
        for inst in (*also_flush, mta):
            if inst.queue():
                inst.flush()
        return None
    try:
        return wait_for(got, timeout=timeout, interval=0.1,
                        what=f"{message_id} for {rcpt} at Postfix {mta.name}")
    except AssertionError as e:
        tails = "\n".join(f"--- {i.name}:\n{i.maillog_tail(15)}" for i in (*also_flush, mta))
        raise AssertionError(f"{e}\n{tails}") from None
