"""The Postfix lines of deploy/postfix applied to private instances (support/postfix.py)
as a postmaster applies them; only addresses, ports and what a test host lacks differ."""

from __future__ import annotations

import re
from pathlib import Path

from support.postfix import PostfixInstance

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


def apply_lmtp_snippet(mta: PostfixInstance, hook_addr: str) -> None:
    """deploy/postfix/receiver-lmtp-main.cf as written (the hook's address the test's):
    mta's domain as a virtual mailbox domain whose every address goes over LMTP, so
    that the mailbox server behind the hook decides which users exist."""
    maps = mta.config_dir / "virtual_mailbox_lmtp"
    maps.write_text(f"@{mta.domain} any\n")
    mta.postconf(virtual_mailbox_domains=mta.domain, virtual_mailbox_maps=f"texthash:{maps}")
    mta.apply_snippet(DEPLOY / "receiver-lmtp-main.cf")
    host, _, port = hook_addr.rpartition(":")
    mta.postconf(virtual_transport=f"lmtp:inet:{host}:{port}")
