#!/usr/bin/env python3
"""A hostile sender site must slow only its own mails: delivery delay of a healthy
site's mails through a real Postfix and `mailtalk filter`, alone and sent together
with mails from a "tarpit" site whose presence service accepts connections and never
answers.

One private Postfix (127.0.14.80) with the content filter (127.0.14.81) relays to
`smtp-sink`; a real `mailtalk presence` (127.0.14.82) serves the healthy site a.test;
the tarpit (127.0.14.83) is a TCP server in this process that reads nothing and
answers nothing; dnsmasq (127.0.14.84) publishes both `_mailtalk` records. Each run:

    healthy  60 mails of the healthy site, then at once 10 more (the measured ones)
    tarpit   60 mails of the tarpit site, then at once 10 healthy ones

A healthy mail's delay is Postfix's own `delay=` of its delivery to the sink (from
arrival to delivery), found by Message-ID in the maillog; the figure is the slowest
healthy mail of the run. Runs alternate; the result is each one's median and the
ratio (target: at most 1.5x). The first tarpit run meets a closed breaker (as a site
does the first time); later ones run within its cool-down (30 s), as the rest of a
flood would.

    .venv/bin/python bench/tarpit_bench.py [--rounds 3]

Needs root and Debian's postfix and dnsmasq, like the e2e tests.
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
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from filter_bench import TtlDnsmasq  # noqa: E402
from mailtalk_site import MailtalkSite  # noqa: E402
from support import SmtpSink, relay_instance, submit_load  # noqa: E402
from tests.support.dns import mailtalk_txt  # noqa: E402
from tests.support.mailtalk import MailtalkService  # noqa: E402
from tests.support.postfix import chmod_chain  # noqa: E402
from tests.support.wait import free_port  # noqa: E402

MX, FILTER, PRESENCE, TARPIT, DNS, SINK = (f"127.0.14.{n}" for n in range(80, 86))
DEPLOY = HERE.parent / "deploy" / "postfix"
LOOKUP_TIMEOUT = 2.0


def tarpit_server(port: int) -> threading.Event:
    """Accepts connections and never answers; runs until the returned event is set."""
    stop = threading.Event()

    async def serve() -> None:
        held = []

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)
        server = await asyncio.start_server(hold, TARPIT, port)
        while not stop.is_set():
            await asyncio.sleep(0.1)
        server.close()
    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    return stop


class Bench:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.site = MailtalkSite(PRESENCE, "a.test")
        self.sink = SmtpSink(SINK)
        self.mx = relay_instance(base, "mx", MX, "b.test", self.sink)
        self.next = 0
        self.sent = 0

    async def setup(self, accounts: int) -> None:
        self.sink.start()
        await self.site.populate([f"u{i}@a.test" for i in range(accounts)])
        self.tarpit_port = free_port(TARPIT)
        self.stop_tarpit = tarpit_server(self.tarpit_port)
        self.dns = TtlDnsmasq(DNS, ttl=3600, log_dir=self.base, txt_records={
            "_mailtalk.a.test": mailtalk_txt(self.site.base_url),
            "_mailtalk.tarpit.test": f"v=mailtalk1; api=http://{TARPIT}:{self.tarpit_port}"})
        self.dns.start()
        self.site.extra_presence += f'\n[dns]\nnameservers = ["{self.dns.nameserver}"]\n'
        await self.site.start()
        port, reinject = free_port(FILTER), free_port(MX)
        self.flt = MailtalkService(self.base, {
            "filter": {"listen": f"{FILTER}:{port}", "reinject": f"{MX}:{reinject}",
                       "lookup_timeout": LOOKUP_TIMEOUT},
            "dns": {"nameservers": [self.dns.nameserver]}}, subcommand="filter")
        self.flt.start()
        self.mx.apply_snippet(DEPLOY / "receiver-master.cf")
        self.mx.master_replace("127.0.0.1:10026", f"{MX}:{reinject}")
        self.mx.postconf(content_filter=f"mailtalk:[{FILTER}]:{port}")
        self.mx.start()

    def mail(self, tag: str, tarpit: bool) -> bytes:
        account = f"mallory{self.next}@tarpit.test" if tarpit else f"u{self.next}@a.test"
        mail_id = self.site.mail_ids.issue(f"u{self.next}@a.test")   # well-formed either way
        self.next += 1
        return (f"From: {account}\r\nTo: bob@b.test\r\nSubject: {tag}\r\n"
                f"Message-ID: <{tag}-{self.next}@bench.test>\r\n"
                f"X-Messenger-Account: {account}\r\nX-Mail-ID: {mail_id}\r\n\r\n"
                "Hello\r\n").encode()

    def run(self, with_tarpit: bool, tag: str) -> float:
        """60 mails (from the tarpit, or from the healthy site: the same load), then
        at once 10 healthy ones; the slowest healthy mail's delay in seconds."""
        others = [self.mail(f"{tag}-other", with_tarpit) for _ in range(60)]
        healthy = [self.mail(tag, False) for _ in range(10)]
        t = threading.Thread(target=submit_load, args=(MX, self.mx.smtp_port, 60, 10, None),
                             kwargs={"make_message": others.__getitem__})
        t.start()
        submit_load(MX, self.mx.smtp_port, 10, 10, None, make_message=healthy.__getitem__)
        t.join()
        self.sent += 70
        self.sink.wait_count(self.sent, timeout=300)
        self.mx.wait_queue_empty(timeout=120, flush=False)
        return max(delays(self.mx.maillog(), tag))

    async def teardown(self) -> None:
        for stop in (self.mx.stop, self.flt.stop, self.dns.stop, self.sink.stop,
                     self.stop_tarpit.set):
            try:
                stop()
            except Exception as e:          # keep stopping the rest
                print(f"teardown: {e}", file=sys.stderr)
        await self.site.stop()


def delays(log: str, tag: str) -> list[float]:
    """Each mail's time from arrival to delivery at the sink, from Postfix's delay=:
    the leg to the filter (its wait for the lookup included) plus the re-injected
    copy's leg to the sink ("queued as" links the two)."""
    qids = set(re.findall(rf"(\w+): message-id=<{re.escape(tag)}-\d+@bench\.test>", log))
    first = {m.group(1): (float(m.group(2)), m.group(3)) for m in re.finditer(
        r"/smtp\[\d+\]: (\w+): to=<[^>]+>, relay=[^,]*" + re.escape(FILTER)
        + r"[^,]*,.*? delay=([\d.]+),.*queued as (\w+)", log)}
    last = {m.group(1): float(m.group(2)) for m in re.finditer(
        r"/smtp\[\d+\]: (\w+): to=<[^>]+>, relay=[^,]*" + re.escape(SINK)
        + r"[^,]*,.*? delay=([\d.]+)", log)}
    return [d + last[again] for q, (d, again) in first.items() if q in qids and again in last]


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("tarpit_bench: needs root (a private Postfix)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="mailtalk-tarpit-bench-"))
    chmod_chain(base)
    bench = Bench(base)
    alone: list[float] = []
    mixed: list[float] = []
    try:
        await bench.setup(140 * (args.rounds + 1))
        bench.run(False, "warm")
        for r in range(args.rounds):
            alone.append(bench.run(False, f"alone{r}"))
            mixed.append(bench.run(True, f"mixed{r}"))
            print(f"round {r + 1}: healthy {alone[-1]:.2f} s, with the tarpit {mixed[-1]:.2f} s",
                  flush=True)
        load = os.getloadavg()[0]
    finally:
        await bench.teardown()
        if not os.environ.get("KEEP"):
            shutil.rmtree(base, ignore_errors=True)
    a, m = statistics.median(alone), statistics.median(mixed)
    print(f"\nslowest healthy mail (Postfix's delay=, median of {args.rounds}): behind 60 "
          f"healthy mails {a:.2f} s, behind 60 tarpit mails {m:.2f} s: {m / a:.2f}x (target "
          f"at most 1.5x); per round: {[round(x / y, 2) for x, y in zip(mixed, alone)]}; lookup "
          f"timeout {LOOKUP_TIMEOUT} s, load average {load:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
