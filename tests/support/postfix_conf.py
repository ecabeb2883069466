"""What every private Postfix instance starts with: its master.cf services, main.cf
settings and SASL files (per /work/shared/TESTING-NOTES.md); whether one can run here."""

from __future__ import annotations

import os
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"

# The daemons a Postfix instance needs, every one with chroot = n (a private instance
# has no chroot jail set up). The public smtpd line (with its address) is added by
# the class; `postlog` makes logging work without syslog.
MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def base_settings(name: str, domain: str, address: str, inst_dir: Path, config_dir: Path,
                  queue_dir: Path, data_dir: Path, maillog: Path) -> dict[str, str]:
    """main.cf of a private instance: own dirs, own log, loopback only, no DNS,
    nobody relays without logging in, retries within seconds."""
    return dict(
        compatibility_level="3.6",
        config_directory=str(config_dir),
        queue_directory=str(queue_dir),
        data_directory=str(data_dir),
        maillog_file=str(maillog),
        maillog_file_prefixes=str(inst_dir),
        syslog_name=f"postfix-{name}",
        myhostname=f"mx.{domain}",
        mydomain=domain,
        myorigin="$mydomain",
        mydestination="",
        # Nobody may relay without logging in: the tests' clients come from
        # 127.0.0.1, which the default mynetworks would trust.
        mynetworks="",
        smtpd_relay_restrictions="permit_mynetworks, permit_sasl_authenticated, "
                                 "reject_unauth_destination",
        inet_interfaces="loopback-only",
        inet_protocols="ipv4",
        smtp_bind_address=address,
        smtpd_peername_lookup="no",
        smtp_dns_support_level="disabled",
        smtp_host_lookup="native",
        biff="no",
        append_dot_mydomain="no",
        smtpd_banner=f"$myhostname ESMTP {name}",
        local_transport="error:no local delivery in tests",
        alias_maps="",
        alias_database="",
        transport_maps="",
        # Retry deferred mail within seconds, not minutes.
        queue_run_delay="1s",
        minimal_backoff_time="1s",
        maximal_backoff_time="2s",
        maximal_queue_lifetime="1h",
        bounce_queue_lifetime="1h",
        smtp_connect_timeout="5s",
        # A test fails loudly instead of being rejected at random for load.
        smtpd_client_connection_rate_limit="0",
        smtpd_client_connection_count_limit="0",
        smtpd_error_sleep_time="0",
        smtpd_soft_error_limit="100",
        smtpd_hard_error_limit="200",
        in_flow_delay="0",
        default_process_limit="50",
    )


def logical_lines(text: str) -> list[str]:
    """main.cf lines with comments dropped and indented continuations joined."""
    lines: list[str] = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0] in " \t" and lines:
            lines[-1] += " " + raw.strip()
        else:
            lines.append(raw.strip())
    return lines


def sasl_smtpd_conf(sasldb: Path) -> str:
    """Cyrus SASL's smtpd.conf: passwords from our own sasldb, plain mechanisms."""
    return ("pwcheck_method: auxprop\n"
            "auxprop_plugin: sasldb\n"
            f"sasldb_path: {sasldb}\n"
            "mech_list: PLAIN LOGIN\n")


def submission_service(address: str, port: int) -> str:
    """master.cf lines of a submission service that takes mail only after log-in."""
    return (f"{address}:{port} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/submission\n"
            "  -o smtpd_sasl_auth_enable=yes\n"
            "  -o smtpd_tls_security_level=none\n"
            "  -o smtpd_client_restrictions=permit_sasl_authenticated,reject\n"
            "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
            "  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject\n")


def available() -> str | None:
    """None when private Postfix instances can run here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (private Postfix instances are started as root)"
    for tool in (POSTFIX, POSTCONF, POSTQUEUE):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing (apt-get install postfix)"
    return None


def chmod_chain(path: Path) -> None:
    """chmod 755 `path` and its parents up to /tmp-like roots, so that Postfix's
    processes (user `postfix`, `nobody`) can enter it: mktemp dirs are 0700."""
    path = path.resolve()
    for p in [path, *path.parents]:
        if p == Path("/"):
            break
        st = p.stat()
        if st.st_mode & 0o005 != 0o005:
            p.chmod(st.st_mode | 0o755)


def _alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie (the master is a
    child of `postfix start`'s shell, so it is reaped by init, not by us)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
