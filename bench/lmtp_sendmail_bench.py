#!/usr/bin/env python3
"""Final delivery into a real Dovecot from Sendmail, with and without mailtalk's hook.

lmtp_bench.py's question for Sendmail sites (deploy/sendmail/receiver-lmtp.mc): two
private Sendmails built from that .mc, one private Dovecot (LMTP), one live
`mailtalk presence` for the senders (found through dnsmasq):

    direct    Sendmail (127.0.14.90) -> its `mailtalk` LMTP mailer pointed straight at
              Dovecot: the floor (bob@direct.test)
    lmtp      Sendmail (127.0.14.91) -> the same mailer -> `mailtalk filter` in
              `[filter] mode = "lmtp"` (127.0.14.93) -> Dovecot, a live lookup per
              mail (bob@hook.test)

The mails are lmtp_bench.py's (multipart, ~6 KB, a sender of their own with a valid
claim). A run's figure is N / (time from the first connection until Dovecot holds the
N-th new message, read with IMAP STATUS on one kept connection). Runs alternate
after a warm-up; the result is each configuration's median rate and the ratio to
`direct` in each round.

    .venv/bin/python bench/lmtp_sendmail_bench.py [--messages 300] [--sessions 10] [--rounds 3]

Needs root and what `scripts/setup --test` installs (Sendmail unpacked, Dovecot, dnsmasq).
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from filter_bench import TtlDnsmasq  # noqa: E402
from lmtp_bench import Bench, all_answered, measure_rounds, parse_args, print_rates  # noqa: E402
from mailtalk_site import MailtalkSite  # noqa: E402
from tests.support.dns import mailtalk_txt  # noqa: E402
from tests.support.dovecot import Dovecot  # noqa: E402
from tests.support.postfix import chmod_chain  # noqa: E402
from tests.support.sendmail import SendmailInstance, unavailable  # noqa: E402
from tests.support.wait import free_port  # noqa: E402

MTA = {"direct": "127.0.14.90", "lmtp": "127.0.14.91"}
DOVECOT, HOOK, PRESENCE, DNS = "127.0.14.92", "127.0.14.93", "127.0.14.94", "127.0.14.95"
CONFIGS = ("direct", "lmtp")
DOMAIN = {"direct": "direct.test", "lmtp": "hook.test"}
MC = HERE.parent / "deploy" / "sendmail" / "receiver-lmtp.mc"
PASSWORD = "bench-pw-1"


class SendmailBench(Bench):
    """lmtp_bench's Bench (its mails and the hook's answers) with Sendmail as the MTA."""

    def __init__(self, base: Path, args: argparse.Namespace) -> None:   # noqa: D107
        self.base, self.args = base, args
        self.site = MailtalkSite(PRESENCE, "a.test")
        self.dovecot = Dovecot(base, {f"bob@{d}": PASSWORD for d in DOMAIN.values()},
                               address=DOVECOT)
        self.services, self.mtas, self.imap = {}, {}, {}
        self.next_sender = 0
        self.signing_key = base / "lookup-signing.key"
        self.cpu = {c: 0.0 for c in CONFIGS}
        self.presence_cpu = {c: 0.0 for c in CONFIGS}
        self.mails = {c: 0 for c in CONFIGS}

    async def setup(self, accounts: int) -> None:
        await self.site.populate([f"u{i}@a.test" for i in range(accounts)])
        self.dns = TtlDnsmasq(DNS, txt_records={
            "_mailtalk.a.test": mailtalk_txt(self.site.base_url),
            "_mailtalk.hook.test": mailtalk_txt("http://127.0.0.1:9", self.signing_key)},
            log_dir=self.base, ttl=3600)
        self.dns.start()
        self.site.extra_presence += f'\n[dns]\nnameservers = ["{self.dns.nameserver}"]\n'
        await self.site.start()
        self.dovecot.start()
        hook = free_port(HOOK)
        self.services["lmtp"] = self._service("hook", {
            "mode": "lmtp", "listen": f"{HOOK}:{hook}", "lmtp_next": self.dovecot.lmtp})
        next_hop = {"direct": self.dovecot.lmtp.replace(":", " "), "lmtp": f"{HOOK} {hook}"}
        for config in CONFIGS:
            mta = SendmailInstance(self.base, config, MTA[config], DOMAIN[config], (DOVECOT, 9))
            mta.snippets.append(f"LOCAL_DOMAIN(`{DOMAIN[config]}')dnl\n")
            mta.add_snippet(MC, {"TCP 127.0.0.1 10024": f"TCP {next_hop[config]}"})
            mta.start()
            self.mtas[config] = mta
            imap = imaplib.IMAP4(DOVECOT, self.dovecot.imap_port, timeout=10)
            imap.login(f"bob@{DOMAIN[config]}", PASSWORD)
            self.imap[config] = imap

    def delivered(self, config: str) -> int:
        """Messages in this configuration's mailbox now (IMAP STATUS)."""
        typ, data = self.imap[config].status("INBOX", "(MESSAGES)")
        assert typ == "OK", data
        return int(data[0].split(b"MESSAGES ")[1].split(b")")[0])

    def endpoint(self, config: str) -> tuple[str, int]:
        return MTA[config], self.mtas[config].port

    def settle(self) -> None:
        """Counted in the mailbox: nothing left to wait for."""

    def stoppers(self) -> list[Any]:
        return [*(m.stop for m in self.mtas.values()), *(s.stop for s in self.services.values()),
                self.dovecot.stop, getattr(getattr(self, "dns", None), "stop", None)]

    async def teardown(self) -> None:
        for imap in self.imap.values():
            try:
                imap.logout()
            except (OSError, imaplib.IMAP4.error):
                pass
        await super().teardown()


def report(bench: SendmailBench, args: argparse.Namespace, rates: dict[str, list[float]],
           total: int) -> int:
    print(f"\n{args.messages} mails per run, {args.sessions} sessions, {args.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.2f}")
    print_rates(bench, CONFIGS, rates)
    return 0 if all_answered(bench.answers(), total) else 1


async def main() -> int:
    args = parse_args(__doc__)
    if os.geteuid() != 0 or unavailable():
        print(f"lmtp_sendmail_bench: needs root and Sendmail ({unavailable() or 'not root'})",
              file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="mailtalk-sm-bench-"))
    chmod_chain(base)
    bench = SendmailBench(base, args)
    warm = max(50, args.messages // 4)
    try:
        await bench.setup(len(CONFIGS) * (1 + warm + args.rounds * args.messages))
        for config in CONFIGS:
            # one mail first: until a.test has answered once, the hook lets only a few
            # lookups wait on it at once (mailtalk/site_breaker.py), and Sendmail
            # delivers the first burst all at once
            bench.run(config, 1)
            bench.run(config, warm)
        rates = measure_rounds(bench, CONFIGS, args)
        return report(bench, args, rates, 1 + warm + args.rounds * args.messages)
    finally:
        await bench.teardown()
        if not os.environ.get("KEEP"):
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
