"""Two mail sites, every part real, for the two-site end-to-end tests.

a.test and b.test are each a whole mailtalk site as the README deploys one: a private
Postfix with SASL submission through the sending milter (deploy/postfix/sender-*.cf)
and the after-queue content filter in front of Maildir delivery (receiver-*.cf), and
`mailtalk milter`, `mailtalk filter` and `mailtalk presence` as three processes with
one site state (one site key, one lookup signing key). dnsmasq serves both
`_mailtalk` TXT records, with each site's `k=`; both sites ask it.

    a.test: Postfix 127.0.14.2, mailtalk 127.0.14.4
    b.test: Postfix 127.0.14.3, mailtalk 127.0.14.5
    dnsmasq 127.0.14.53

Accounts (messenger account and SASL login): alice@a.test at a.test, bob@b.test at
b.test. Every other address of either domain is a mailbox (carol@b.test, dave@a.test):
each site delivers its domain into one catch-all Maildir.

    with two_sites(base) as w:       # started; everything stopped on leaving
        w.send([BOB], "Subject", "<id@a.test>")
        raw = w.mail(BOB, "<id@a.test>")
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .dns import Dnsmasq, mailtalk_txt
from .mailtalk import MailtalkService
from .postfix import PostfixInstance, chmod_chain
from .postfix_deploy import apply_lmtp_snippet, apply_receiver_snippets, apply_sender_snippets
from .postfix_mailbox import wait_mail
from .requires import require_dnsmasq, require_postfix, require_swaks
from .smtp import make_message, swaks
from .wait import free_port

log = logging.getLogger("tests.two_sites")

A_MX, B_MX = "127.0.14.2", "127.0.14.3"          # the two Postfix instances
A_SVC, B_SVC = "127.0.14.4", "127.0.14.5"        # mailtalk at a.test, at b.test
DNS = "127.0.14.53"
ALICE, BOB, CAROL, DAVE = "alice@a.test", "bob@b.test", "carol@b.test", "dave@a.test"
PASSWORD = "alice-e2e-Secret-42"                 # alice's, at a.test
BOB_PASSWORD = "bob-e2e-Secret-43"               # bob's, at b.test
LOOKUP_TIMEOUT = 1.5          # both sites' [filter] lookup_timeout


@contextmanager
def world_dir(request: Any) -> Iterator[Path]:
    """A module's world directory (`make_base`), after the checks every world needs:
    removed after the module, or kept (and its path logged) when a test of it failed,
    with the maillogs, the services' logs and dnsmasq's log for inspection."""
    require_postfix()
    require_swaks()
    require_dnsmasq()
    base = make_base()
    failed = request.session.testsfailed
    yield base
    if request.session.testsfailed == failed:
        shutil.rmtree(base, ignore_errors=True)
    else:
        log.warning("kept %s for inspection", base)


def make_base() -> Path:
    """A fresh 0755 directory (path chain included) for one world, under
    MAILTALK_TEST_TMP when it is set."""
    root = os.environ.get("MAILTALK_TEST_TMP", tempfile.gettempdir())
    base = Path(tempfile.mkdtemp(prefix="mailtalk-e2e-two-sites-", dir=root))
    chmod_chain(base)
    return base


@dataclass
class World:
    base: Path
    a: PostfixInstance
    b: PostfixInstance
    dns: Dnsmasq
    a_cfg: dict
    b_cfg: dict
    a_milter: MailtalkService
    a_filter: MailtalkService
    a_presence: MailtalkService
    b_milter: MailtalkService
    b_filter: MailtalkService
    b_presence: MailtalkService
    submit_port: int              # a.test's submission with the sending milter
    b_submit_port: int            # b.test's

    @property
    def a_url(self) -> str:
        return self.a_cfg["presence"]["public_url"]

    @property
    def b_url(self) -> str:
        return self.b_cfg["presence"]["public_url"]

    def services(self) -> list[MailtalkService]:
        return [self.a_milter, self.a_filter, self.a_presence,
                self.b_milter, self.b_filter, self.b_presence]

    def send(self, rcpts: list[str], subject: str, message_id: str) -> None:
        """alice logs in on a.test's submission port and sends with swaks."""
        msg = make_message(from_=ALICE, to=rcpts, subject=subject, message_id=message_id,
                           body=f"Hello,\r\n{subject}\r\nAlice\r\n")
        self.submit(ALICE, rcpts, msg)

    def submit(self, login: str, rcpts: list[str], message: bytes) -> None:
        """`login` (alice@a.test or bob@b.test) logs in on the submission port of
        their own site and sends `message` (CRLF) byte for byte with swaks."""
        mx, port, password = ((A_MX, self.submit_port, PASSWORD) if login == ALICE
                              else (B_MX, self.b_submit_port, BOB_PASSWORD))
        code, transcript = swaks(mx, port, to=rcpts, from_=login, auth=(login, password),
                                 data=message)
        assert code == 0, transcript

    def mail(self, rcpt: str, message_id: str, timeout: float = 30.0) -> bytes:
        """The one delivered copy of `message_id` in `rcpt`'s mailbox (at b.test or
        a.test, by the address), flushing both queues while waiting."""
        mta, other = (self.b, self.a) if rcpt.endswith("@b.test") else (self.a, self.b)
        copies = wait_mail(mta, rcpt, message_id, timeout=timeout, also_flush=(other,))
        assert len(copies) == 1, f"{len(copies)} copies of {message_id} for {rcpt}"
        return copies[0]


def _site_config(state: Path, domain: str, svc: str, mx: str, dns: str,
                 lmtp_next: str | None = None) -> dict:
    port = free_port(svc)
    cfg = {"site": {"state_dir": str(state)}, "domains": {"names": [domain]},
           "presence": {"listen": f"{svc}:{port}", "public_url": f"http://{svc}:{port}"},
           "dns": {"nameservers": [dns]},
           "milter": {"socket": f"inet:{free_port(svc)}@{svc}", "outbox_retry_max": 1},
           "filter": {"listen": f"{svc}:{free_port(svc)}", "reinject": f"{mx}:{free_port(mx)}",
                      "lookup_timeout": LOOKUP_TIMEOUT}}
    if lmtp_next is not None:      # the hook at final delivery, in front of that server
        cfg["filter"].update(mode="lmtp", lmtp_next=lmtp_next)
        del cfg["filter"]["reinject"]
    return cfg


def _services(base: Path, site: str, cfg: dict) -> dict[str, MailtalkService]:
    return {f"{site}_{sub}": MailtalkService(base, cfg, subcommand=sub, name=f"{site}-{sub}")
            for sub in ("milter", "filter", "presence")}


def _configure_postfix(mta: PostfixInstance, cfg: dict, login: str, password: str,
                       submit_port: int, snippets: Path) -> None:
    """Both sides of deploy/postfix on one instance, as one site runs them."""
    if cfg["filter"].get("mode") == "lmtp":
        apply_lmtp_snippet(mta, cfg["filter"]["listen"])
    else:
        mta.local_maildir([mta.domain])
        reinject = int(cfg["filter"]["reinject"].rpartition(":")[2])
        apply_receiver_snippets(mta, cfg["filter"]["listen"], reinject)
    port, _, host = cfg["milter"]["socket"][len("inet:"):].partition("@")
    mta.enable_sasl_submission(users={login: password})
    snippets.mkdir(exist_ok=True)
    apply_sender_snippets(mta, f"inet:{host}:{port}", submit_port, snippets)


def _start_side_by_side(services: list[MailtalkService]) -> None:
    """Start them in parallel (each waits for its own ports): seconds saved."""
    with ThreadPoolExecutor(len(services)) as pool:
        for future in [pool.submit(s.start) for s in services]:
            future.result()


@contextmanager
def two_sites(base: Path, *, b_lmtp_next: str | None = None, a_signer: str = "",
              b_verifier: str = "", b_filter: dict | None = None,
              a_presence: dict | None = None, b_presence: dict | None = None
              ) -> Iterator[World]:
    """Both sites, started; on leaving, everything stopped (killed if need be).

    `b_lmtp_next` (HOST:PORT of an LMTP server, e.g. support.dovecot's): b.test
    delivers its mailboxes over LMTP through mailtalk's LMTP hook to that server
    (deploy/postfix/receiver-lmtp-main.cf) instead of the content filter and Maildir.
    `a_signer`: a DKIM signing milter (Postfix form) after ours on a.test's submission;
    `b_verifier`: a verifying milter on b.test's smtpd; `b_filter`: more [filter] keys;
    `a_presence`, `b_presence`: more [presence] keys at each site (`submit = "MTA"` at
    a.test: a.test's Postfix)."""
    dns_ns = f"{DNS}:{free_port(DNS)}"
    a_cfg = _site_config(base / "a-state", "a.test", A_SVC, A_MX, dns_ns)
    b_cfg = _site_config(base / "b-state", "b.test", B_SVC, B_MX, dns_ns, b_lmtp_next)
    b_cfg["filter"].update(b_filter or {})
    a_cfg["presence"].update(a_presence or {})
    b_cfg["presence"].update(b_presence or {})
    dns = Dnsmasq(DNS, port=int(dns_ns.rpartition(":")[2]), log_dir=base, txt_records={
        "_mailtalk.a.test": mailtalk_txt(a_cfg["presence"]["public_url"],
                                         base / "a-state" / "lookup-signing.key"),
        "_mailtalk.b.test": mailtalk_txt(b_cfg["presence"]["public_url"],
                                         base / "b-state" / "lookup-signing.key")})
    a = PostfixInstance(base, "a", A_MX, "a.test")
    b = PostfixInstance(base, "b", B_MX, "b.test")
    digests_via_mta = a_cfg["presence"].get("submit") == "MTA"
    if digests_via_mta:
        a_cfg["presence"]["submit"] = f"{A_MX}:{a.smtp_port}"
    w = World(base, a, b, dns, a_cfg, b_cfg, **_services(base, "a", a_cfg),
              **_services(base, "b", b_cfg), submit_port=free_port(A_MX),
              b_submit_port=free_port(B_MX))
    try:
        dns.start()
        # The presence services first: they make each site's key, which the milters
        # then read (two processes making it at once could catch a half-written one).
        _start_side_by_side([w.a_presence, w.b_presence])
        _start_side_by_side([w.a_milter, w.a_filter, w.b_milter, w.b_filter])
        for svc, account, password in ((w.a_presence, ALICE, PASSWORD),
                                       (w.b_presence, BOB, BOB_PASSWORD)):
            r = svc.command("user", "add", account, "--password-stdin", input=password + "\n")
            assert r.returncode == 0, r.stderr
        _configure_postfix(a, a_cfg, ALICE, PASSWORD, w.submit_port, base / "a-snippets")
        _configure_postfix(b, b_cfg, BOB, BOB_PASSWORD, w.b_submit_port, base / "b-snippets")
        if digests_via_mta:       # the presence service's digests, from 127.0.0.1, relay
            a.postconf(mynetworks="127.0.0.1/32")
        if a_signer:              # deploy/dkim/opendkim.conf: the signer after our milter
            ours = "inet:" + a_cfg["milter"]["socket"][len("inet:"):].partition("@")[2] \
                + ":" + a_cfg["milter"]["socket"][len("inet:"):].partition("@")[0]
            a.master_replace(f"smtpd_milters={ours}", f"smtpd_milters={ours},{a_signer}")
        if b_verifier:
            b.postconf(smtpd_milters=b_verifier)
        a.relay_to("b.test", B_MX, b.smtp_port)
        b.relay_to("a.test", A_MX, a.smtp_port)
        b.start()
        a.start()
        yield w
    finally:
        for inst in (a, b):
            try:
                inst.stop()
            except Exception:
                log.exception("stopping Postfix %s", inst.name)
        for svc in w.services():      # the current ones: a test may have replaced one
            svc.kill()
        dns.stop()
