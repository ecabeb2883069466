#!/usr/bin/env python3
"""Throughput of final delivery into a real Dovecot, with and without mailtalk.

One private Postfix (127.0.14.70) and one private Dovecot (127.0.14.71, LMTP, mail
fsync'd as Dovecot does by default). Each configuration has a recipient domain of
its own, so one run compares them on the same Postfix, Dovecot, machine and moment:

    direct    the floor: Postfix's lmtp(8) straight to Dovecot (bob@direct.test)
    lmtp      Postfix -> `mailtalk filter` in `[filter] mode = "lmtp"` (the hook at
              127.0.14.72) -> Dovecot, a live lookup per mail (bob@hook.test)
    filter    the content filter mode for comparison: smtpd -> queue -> `mailtalk
              filter` (127.0.14.73) -> re-injection -> queue -> lmtp(8) -> Dovecot
              (bob@filter.test)

Every mail is filter_bench.py's typical mail (multipart/alternative, ~6 KB) from a
sender of its own with a valid claim, so both mailtalk configurations make a live
lookup to a real `mailtalk presence` (127.0.14.74, found through dnsmasq at
127.0.14.75) and add the header and the notice. A run's figure is N / (time from the
first connection until Postfix logged the N-th delivery into Dovecot: `status=sent`
with Dovecot, or the hook, as relay). Runs are interleaved after a warm-up; the
result is each configuration's median rate and its ratio to `direct` in each round.

    .venv/bin/python bench/lmtp_bench.py [--messages 300] [--sessions 10] [--rounds 3]

Needs root and Debian's postfix, dnsmasq and dovecot-lmtpd (scripts/setup --test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from filter_bench import BODY, MIME, TtlDnsmasq, cpu_seconds  # noqa: E402
from mailtalk_site import MailtalkSite  # noqa: E402
from support import submit_load  # noqa: E402
from tests.support.dns import mailtalk_txt  # noqa: E402
from tests.support.dovecot import Dovecot  # noqa: E402
from tests.support.mailtalk import MailtalkService  # noqa: E402
from tests.support.postfix import PostfixInstance, chmod_chain  # noqa: E402
from tests.support.wait import free_port  # noqa: E402

MX, DOVECOT, HOOK, FILTER, PRESENCE, DNS = (f"127.0.14.{n}" for n in range(70, 76))
CONFIGS = ("direct", "lmtp", "filter")
DOMAIN = {"direct": "direct.test", "lmtp": "hook.test", "filter": "filter.test"}
DEPLOY = HERE.parent / "deploy" / "postfix"


class Bench:
    def __init__(self, base: Path, args: argparse.Namespace) -> None:
        self.base, self.args = base, args
        self.site = MailtalkSite(PRESENCE, "a.test")
        self.dovecot = Dovecot(base, {f"bob@{d}": "bench-pw-1" for d in DOMAIN.values()},
                               address=DOVECOT)
        self.mx = PostfixInstance(base, "mx", MX, "mx.test")
        self.services: dict[str, MailtalkService] = {}
        self.ports: dict[str, int] = {}
        self.next_sender = 0
        self.signing_key = base / "lookup-signing.key"
        self.cpu: dict[str, float] = {c: 0.0 for c in CONFIGS}        # the mailtalk process
        self.presence_cpu: dict[str, float] = {c: 0.0 for c in CONFIGS}
        self.mails: dict[str, int] = {c: 0 for c in CONFIGS}

    def _service(self, name: str, filter_cfg: dict) -> MailtalkService:
        svc = MailtalkService(self.base, {
            "site": {"log_level": "info", "signing_key_file": str(self.signing_key)},
            "filter": filter_cfg, "dns": {"nameservers": [self.dns.nameserver]}},
            subcommand="filter", name=name)
        svc.start()
        return svc

    async def setup(self, accounts: int) -> None:
        await self.site.populate([f"u{i}@a.test" for i in range(accounts)])
        records = {"_mailtalk.a.test": mailtalk_txt(self.site.base_url)}
        for d in ("hook.test", "filter.test"):   # the receiving site's signing key
            records[f"_mailtalk.{d}"] = mailtalk_txt("http://127.0.0.1:9", self.signing_key)
        self.dns = TtlDnsmasq(DNS, txt_records=records, log_dir=self.base, ttl=3600)
        self.dns.start()
        self.site.extra_presence += f'\n[dns]\nnameservers = ["{self.dns.nameserver}"]\n'
        await self.site.start()
        self.dovecot.start()
        hook_port, filter_port, reinject = free_port(HOOK), free_port(FILTER), free_port(MX)
        self.services["lmtp"] = self._service("hook", {
            "mode": "lmtp", "listen": f"{HOOK}:{hook_port}", "lmtp_next": self.dovecot.lmtp})
        self.services["filter"] = self._service("filter", {
            "listen": f"{FILTER}:{filter_port}", "reinject": f"{MX}:{reinject}"})
        transport = self.mx.config_dir / "transport"
        transport.write_text(f"direct.test lmtp:inet:{self.dovecot.lmtp}\n"
                             f"filter.test lmtp:inet:{self.dovecot.lmtp}\n"
                             f"hook.test lmtp:inet:{HOOK}:{hook_port}\n")
        self.mx.postconf(mynetworks="127.0.0.0/8", transport_maps=f"texthash:{transport}",
                         default_destination_concurrency_limit="20",
                         default_process_limit="100", smtpd_client_restrictions="",
                         lmtp_send_xforward_command="yes")
        self.mx.apply_snippet(DEPLOY / "receiver-master.cf")
        self.mx.master_replace("127.0.0.1:10026", f"{MX}:{reinject}")
        self.ports = {"direct": self.mx.smtp_port, "lmtp": self.mx.smtp_port,
                      "filter": free_port(MX)}
        self.mx.master_add(f"{MX}:{self.ports['filter']} inet n - n - - smtpd\n"
                           f"  -o content_filter=mailtalk:[{FILTER}]:{filter_port}\n")
        self.mx.start()

    def messages(self, n: int, rcpt: str) -> list[bytes]:
        out = []
        for _ in range(n):
            account = f"u{self.next_sender}@a.test"
            mail_id = self.site.mail_ids.issue(account)
            self.next_sender += 1
            out.append((f"From: {account}\r\nTo: {rcpt}\r\nSubject: bench {mail_id[:8]}\r\n"
                        f"Message-ID: <{mail_id}@bench.test>\r\n"
                        "Date: Sun, 29 Nov 2026 08:00:00 +0000\r\n"
                        f"X-Messenger-Account: {account}\r\nX-Mail-ID: {mail_id}\r\n"
                        + MIME + "\r\n" + BODY).encode())
        return out

    def delivered(self, config: str) -> int:
        """Deliveries of this configuration into Dovecot that Postfix logged."""
        relay = HOOK if config == "lmtp" else DOVECOT
        pattern = re.compile(rf"to=<bob@{re.escape(DOMAIN[config])}>, relay=[^,]*"
                             rf"{re.escape(relay)}[^,]*,.*status=sent")
        return len(pattern.findall(self.mx.maillog()))

    def run(self, config: str, n: int) -> float:
        rcpt = f"bob@{DOMAIN[config]}"
        msgs = self.messages(n, rcpt)
        before = self.delivered(config)
        svc = self.services.get(config)
        cpu0 = cpu_seconds(svc.proc.pid) if svc and svc.proc else 0.0
        presence0 = cpu_seconds(self.site.pid)
        start = time.perf_counter()
        submit_load(*self.endpoint(config), n, self.args.sessions, auth=None,
                    sender="bench@a.test", rcpts=[rcpt], make_message=msgs.__getitem__)
        deadline = start + 300
        while self.delivered(config) < before + n:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{config}: not all {n} mails delivered in 300 s")
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        if svc and svc.proc:
            self.cpu[config] += cpu_seconds(svc.proc.pid) - cpu0
        self.presence_cpu[config] += cpu_seconds(self.site.pid) - presence0
        self.mails[config] += n
        self.settle()
        return n / elapsed

    def endpoint(self, config: str) -> tuple[str, int]:
        """Where this configuration's mails are submitted."""
        return MX, self.ports[config]

    def settle(self) -> None:
        """After a run: the MTA's queue empty before the next."""
        self.mx.wait_queue_empty(timeout=60, flush=False)

    def answers(self) -> dict[str, int]:
        """X-Sender-Online states the two mailtalk processes logged."""
        counts = {"yes": 0, "no": 0, "unknown": 0}
        for svc in self.services.values():
            for m in re.finditer(r"X-Sender-Online for \S+: (yes|no|unknown)", svc.log()):
                counts[m.group(1)] += 1
        return counts

    def stoppers(self) -> list[Any]:
        return [self.mx.stop, *(s.stop for s in self.services.values()), self.dovecot.stop,
                getattr(getattr(self, "dns", None), "stop", None)]

    async def teardown(self) -> None:
        for stop in self.stoppers():
            if stop is not None:
                try:
                    stop()
                except Exception as e:        # keep stopping the rest
                    print(f"teardown: {e}", file=sys.stderr)
        await self.site.stop()


def parse_args(doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=300, help="mails per run (default 300)")
    p.add_argument("--sessions", type=int, default=10, help="concurrent SMTP sessions")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    return p.parse_args()


async def main() -> int:
    args = parse_args(__doc__)
    if os.geteuid() != 0:
        print("lmtp_bench: needs root (private Postfix and Dovecot)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="mailtalk-lmtp-bench-"))
    chmod_chain(base)
    bench = Bench(base, args)
    warm = max(50, args.messages // 4)
    try:
        await bench.setup(len(CONFIGS) * (1 + warm + args.rounds * args.messages))
        for config in CONFIGS:
            # one mail first: until a.test has answered once, a hook lets only a few
            # lookups wait on it at once (mailtalk/site_breaker.py)
            bench.run(config, 1)
            bench.run(config, warm)
        rates = measure_rounds(bench, CONFIGS, args)
        answers = bench.answers()
        load = os.getloadavg()
    finally:
        await bench.teardown()
        if not os.environ.get("KEEP"):
            shutil.rmtree(base, ignore_errors=True)
    print(f"\n{args.messages} mails per run, {args.sessions} sessions, {args.rounds} rounds, "
          f"load average {load[0]:.2f}")
    print_rates(bench, CONFIGS, rates)
    lmtp, flt = statistics.median(rates["lmtp"]), statistics.median(rates["filter"])
    print(f"lmtp vs filter: {lmtp / flt:.2f}x (per round, vs direct: median, range; CPU: "
          f"user+system time per mail of the receiving mailtalk process and of the sending "
          f"site's presence service, which shares these {os.cpu_count()} cores here)")
    return 0 if all_answered(answers, 2 * (1 + warm + args.rounds * args.messages)) else 1


def measure_rounds(bench: Bench, configs: tuple[str, ...], args: argparse.Namespace
                   ) -> dict[str, list[float]]:
    """`--rounds` runs of each configuration, in rotated order; the rates."""
    rates: dict[str, list[float]] = {c: [] for c in configs}
    for r in range(args.rounds):
        k = r % len(configs)
        for config in configs[k:] + configs[:k]:
            rates[config].append(bench.run(config, args.messages))
            print(f"round {r + 1} {config:<7} {rates[config][-1]:7.1f} mails/s", flush=True)
    return rates


def print_rates(bench: Bench, configs: tuple[str, ...], rates: dict[str, list[float]]) -> None:
    """Each configuration's median rate, its ratio to `direct` (median and range over
    rounds) and the CPU per mail of mailtalk's receiving process and presence service."""
    print(f"{'config':<8}{'mails/s':>9}{'vs direct':>11}{'per round':>18}{'mailtalk CPU':>14}"
          f"{'presence CPU':>14}")
    for config in configs:
        paired = sorted(a / b for a, b in zip(rates[config], rates["direct"]))
        cpu = (f"{1000 * bench.cpu[config] / bench.mails[config]:9.2f} ms"
               if config != "direct" else "-")
        pcpu = f"{1000 * bench.presence_cpu[config] / bench.mails[config]:9.2f} ms"
        print(f"{config:<8}{statistics.median(rates[config]):9.1f}"
              f"{statistics.median(paired):10.2f}x{paired[0]:9.2f}-{paired[-1]:.2f}{cpu:>14}"
              f"{pcpu:>14}")


def all_answered(answers: dict[str, int], total: int) -> bool:
    """Whether every mail through mailtalk got a live yes/no (else the run is invalid)."""
    print(f"X-Sender-Online logged: {answers['no']} no, {answers['yes']} yes, "
          f"{answers['unknown']} unknown (of {total} mails through mailtalk)")
    if answers["unknown"] or answers["no"] + answers["yes"] != total:
        print("not every mail got a live answer: the figure is not valid", file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
