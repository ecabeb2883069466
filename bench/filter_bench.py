#!/usr/bin/env python3
"""Throughput of a real Postfix with mailtalk's receiving filter.

One private Postfix (127.0.14.60) relays everything to `smtp-sink`. It has three
smtpd input ports, one per configuration, so that one run compares them on the same
Postfix, machine and moment:

    none      no content filter: smtpd -> queue -> smtp -> sink
    floor     the "sandwich floor": content_filter straight to the re-injection
              service (deploy/postfix/receiver-master.cf), no filter in between
    mailtalk  content_filter to `mailtalk filter`, which asks a real `mailtalk
              presence` (found through dnsmasq) for every mail, then re-injects
    no-lookup the same filter, mails without our headers (no lookup), for scale
    no-notice a second filter with `[filter] notice = false`, the rest as `mailtalk`:
              what the visible notice costs (filter CPU per mail of the two)

Every mail carries `X-Messenger-Account: u<N>@a.test` and a valid `X-Mail-ID` of
that account and is a typical mail: multipart/alternative, about 2.5 KB of text and
3 KB of HTML, so the notice goes into both parts. A different sender for every mail
of every run (the presence
service has them all as accounts): no lookup is answered from a cache, and every
one makes the presence service verify the Mail-ID and issue a link. The filter's
log is read back to prove every mail got `no` from a live lookup (not `unknown`).

The load generator is bench/support.py's `submit_load` (smtplib threads), not
smtp-source: smtp-source sends one fixed message, and this benchmark needs a
different sender and Mail-ID in every mail. A run's figure is N / (time from the
first connection until smtp-sink counted the N-th mail). Runs are interleaved
(each round runs every configuration, in rotated order) after a warm-up; the result
is each configuration's median rate and its ratio to the floor.

    .venv/bin/python bench/filter_bench.py [--messages 400] [--sessions 10] [--rounds 3]
    .venv/bin/python bench/filter_bench.py --client-only   # the lookup client alone

Needs root and Debian's postfix and dnsmasq, like the e2e tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from support import SmtpSink, relay_instance, submit_load, wait_drained  # noqa: E402
from mailtalk_site import MailtalkSite  # noqa: E402
from tests.support.dns import Dnsmasq, mailtalk_txt  # noqa: E402
from tests.support.mailtalk import MailtalkService  # noqa: E402
from tests.support.postfix import chmod_chain  # noqa: E402
from tests.support.wait import free_port  # noqa: E402

MX, SINK, FILTER, PRESENCE, DNS = ("127.0.14.60", "127.0.14.61", "127.0.14.62",
                                   "127.0.14.63", "127.0.14.64")
CONFIGS = ("none", "floor", "mailtalk", "no-lookup", "no-notice")
DEFAULT_CONFIGS = CONFIGS[:4]
DEPLOY = HERE.parent / "deploy" / "postfix"
_TEXT = ("Hello Bob,\r\n\r\n" + "This is a benchmark mail with some ordinary text in it.\r\n" * 40
         + "\r\nAlice\r\n")
_HTML = ("<html><head><meta charset=\"utf-8\"></head><body>\r\n<p>Hello Bob,</p>\r\n"
         + "<p>This is a benchmark mail with some <b>ordinary</b> text in it.</p>\r\n" * 40
         + "<p>Alice</p>\r\n</body></html>\r\n")
MIME = ("MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n")
BODY = ("--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n\r\n" + _TEXT
        + "--b1\r\nContent-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n\r\n" + _HTML + "--b1--\r\n")


class TtlDnsmasq(Dnsmasq):
    """The harness's dnsmasq, answering with a TTL (its default, 0, defeats caching)."""

    def __init__(self, *args, ttl: int, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kw)
        self.ttl = ttl

    def argv(self) -> list[str]:
        return super().argv() + [f"--local-ttl={self.ttl}"]


class Bench:
    def __init__(self, base: Path, args: argparse.Namespace) -> None:
        self.base = base
        self.args = args
        self.site = MailtalkSite(PRESENCE, "a.test")
        self.sink = SmtpSink(SINK)
        self.dns: Dnsmasq | None = None
        self.flt: MailtalkService | None = None
        self.flt_plain: MailtalkService | None = None      # the no-notice config
        self.mx = relay_instance(base, "mx", MX, "b.test", self.sink)
        self.ports: dict[str, int] = {}
        self.reinject = 0
        self.next_sender = 0
        self.received = 0
        self.answers: dict[str, dict[str, int]] = {}     # config -> X-Sender-Online states
        self.cpu: dict[str, dict[str, float]] = {}       # config -> process -> CPU seconds
        self.mails: dict[str, int] = {}                   # config -> mails measured
        self.signing_key = base / "lookup-signing.key"    # both filters sign with it

    def filter_for(self, config: str) -> MailtalkService:
        flt = self.flt_plain if config == "no-notice" else self.flt
        assert flt is not None
        return flt

    def start_filter(self, reinject: int, notice: bool) -> tuple[MailtalkService, int]:
        assert self.dns is not None
        port = free_port(FILTER)
        flt = MailtalkService(self.base, {
            "site": {"log_level": os.environ.get("FILTER_LOG", "info"),
                     "signing_key_file": str(self.signing_key)},
            "filter": {"listen": f"{FILTER}:{port}", "reinject": f"{MX}:{reinject}",
                       "notice": notice,
                       **({"lookup_concurrency_per_domain": self.args.lookup_concurrency}
                          if self.args.lookup_concurrency else {})},
            "dns": {"nameservers": [self.dns.nameserver]}}, subcommand="filter",
            name="filter" if notice else "filter-no-notice")
        flt.start()
        return flt, port

    async def setup(self, accounts: int, configs: tuple[str, ...]) -> None:
        self.sink.start()
        await self.site.populate([f"u{i}@a.test" for i in range(accounts)])
        # b.test (the receiving site) publishes its filters' lookup signing key, as
        # `mailtalk dns` prints it; it runs no presence service here (a loopback api=).
        records = {"_mailtalk.a.test": mailtalk_txt(self.site.base_url),
                   "_mailtalk.b.test": mailtalk_txt("http://127.0.0.1:9", self.signing_key)}
        self.dns = TtlDnsmasq(DNS, txt_records=records, log_dir=self.base, ttl=self.args.dns_ttl)
        self.dns.start()
        self.site.extra_presence += f'\n[dns]\nnameservers = ["{self.dns.nameserver}"]\n'
        await self.site.start()
        reinject = self.reinject = free_port(MX)
        self.flt, filter_port = self.start_filter(reinject, True)
        plain_port = 0
        if "no-notice" in configs:         # the same filter without the notice
            self.flt_plain, plain_port = self.start_filter(reinject, False)
        # receiver-master.cf as shipped (the `mailtalk` transport and the re-injection
        # smtpd), its address adapted; no global content_filter: each input port
        # chooses its own with -o.
        self.mx.apply_snippet(DEPLOY / "receiver-master.cf")
        self.mx.master_replace("127.0.0.1:10026", f"{MX}:{reinject}")
        self.ports = {"none": self.mx.smtp_port, "floor": free_port(MX), "mailtalk": free_port(MX),
                      "no-notice": free_port(MX)}
        self.mx.master_add(
            f"{MX}:{self.ports['floor']} inet n - n - - smtpd\n"
            f"  -o content_filter=mailtalk:[{MX}]:{reinject}\n"
            f"{MX}:{self.ports['mailtalk']} inet n - n - - smtpd\n"
            f"  -o content_filter=mailtalk:[{FILTER}]:{filter_port}\n"
            + (f"{MX}:{self.ports['no-notice']} inet n - n - - smtpd\n"
               f"  -o content_filter=mailtalk:[{FILTER}]:{plain_port}\n"
               if plain_port else ""))
        self.mx.start()

    def messages(self, n: int, claim: bool = True) -> list[bytes]:
        out = []
        for _ in range(n):
            account = f"u{self.next_sender}@a.test"
            mail_id = self.site.mail_ids.issue(account)
            self.next_sender += 1
            out.append((f"From: {account}\r\nTo: bob@b.test\r\nSubject: bench {mail_id[:8]}\r\n"
                        f"Message-ID: <{mail_id}@bench.test>\r\n"
                        "Date: Sun, 29 Nov 2026 08:00:00 +0000\r\n"
                        + (f"X-Messenger-Account: {account}\r\nX-Mail-ID: {mail_id}\r\n"
                           if claim else "") + MIME + "\r\n" + BODY).encode())
        return out

    def run(self, config: str, n: int) -> float:
        """n mails into one configuration's port; mails per second until all reached the sink."""
        msgs = self.messages(n, claim=config != "no-lookup")
        port = self.ports["mailtalk" if config == "no-lookup" else config]
        # The re-injection smtpd (maxproc 10) is shared: the floor's transports and the
        # filter's pool keep idle connections to it (2 s). Left over into the next
        # configuration's run, they hold its processes and new connections queue.
        wait_no_connections(MX, self.reinject, timeout=30)
        start = time.perf_counter()
        submit_load(MX, port, n, self.args.sessions, auth=None,
                    sender="bench@a.test", rcpts=["bob@b.test"], make_message=msgs.__getitem__)
        self.received += n
        self.sink.wait_count(self.received, timeout=300)
        elapsed = time.perf_counter() - start
        wait_drained(self.mx, self.sink, self.received)
        return n / elapsed

    def measure(self, config: str, n: int) -> float:
        """run(), counting the X-Sender-Online states the filter logged for it."""
        flt = self.filter_for(config)
        before = states_in_log(flt.log())
        pids = {"filter": flt.proc.pid if flt.proc else None, "presence": self.site.pid}
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        machine0 = machine_busy_seconds()
        rate = self.run(config, n)
        cpu = self.cpu.setdefault(config, {k: 0.0 for k in [*pids, "machine"]})
        for k, pid in pids.items():
            cpu[k] += cpu_seconds(pid) - cpu0[k]
        cpu["machine"] += machine_busy_seconds() - machine0
        self.mails[config] = self.mails.get(config, 0) + n
        after = states_in_log(flt.log())
        got = self.answers.setdefault(config, {k: 0 for k in after})
        for k in after:
            got[k] += after[k] - before[k]
        return rate

    async def teardown(self) -> None:
        for stop in (self.mx.stop, self.flt.stop if self.flt else None,
                     self.flt_plain.stop if self.flt_plain else None,
                     self.dns.stop if self.dns else None, self.sink.stop):
            if stop is not None:
                try:
                    stop()
                except Exception as e:         # keep stopping the rest
                    print(f"teardown: {e}", file=sys.stderr)
        await self.site.stop(keep=bool(os.environ.get("KEEP")))


async def client_only(args: argparse.Namespace) -> int:
    """The lookup client alone against the same presence service: PresenceLookup vs
    a bare aiohttp POST loop, `--sessions` lookups in flight, distinct senders."""
    import aiohttp

    from mailtalk.config import parse_text
    from mailtalk.lookup import PresenceLookup

    n = args.messages
    site = MailtalkSite(PRESENCE, "a.test")
    accounts = [f"u{i}@a.test" for i in range(4 * n + 1)]
    await site.populate(accounts)
    await site.start()
    dns = TtlDnsmasq(DNS, txt_records={"_mailtalk.a.test": mailtalk_txt(site.base_url)},
                     ttl=args.dns_ttl)
    dns.start()
    client = PresenceLookup(parse_text(f'[dns]\nnameservers = ["{dns.nameserver}"]\n', "bench"))
    try:
        await client.lookup(accounts[-1], site.mail_ids.issue(accounts[-1]), ["bob@b.test"])

        cpu: dict[str, list[float]] = {"client": [0.0, 0.0], "server": [0.0, 0.0]}

        async def rate(first: int, ask) -> tuple[float, set]:  # type: ignore[no-untyped-def]
            jobs = [(a, site.mail_ids.issue(a)) for a in accounts[first:first + n]]
            gate = asyncio.Semaphore(args.sessions)

            async def one(a: str, m: str):  # type: ignore[no-untyped-def]
                async with gate:
                    return await ask(a, m)
            start, own0, server0 = time.perf_counter(), time.process_time(), cpu_seconds(site.pid)
            got = await asyncio.gather(*(one(a, m) for a, m in jobs))
            which = 0 if ask is via_client else 1
            cpu["client"][which] += time.process_time() - own0
            cpu["server"][which] += cpu_seconds(site.pid) - server0
            return n / (time.perf_counter() - start), set(got)

        async def via_client(a: str, m: str) -> str:
            return (await client.lookup(a, m, ["bob@b.test"])).state

        async with aiohttp.ClientSession() as http:
            async def raw(a: str, m: str) -> str:
                async with http.post(site.base_url + "/api/v1/lookup", json={
                        "account": a, "mail_id": m, "recipients": ["bob@b.test"]}) as r:
                    return str((await r.json())["status"])
            # Interleaved, twice each: the service's SQLite grows as links are issued.
            r1, states = await rate(0, via_client)
            r2, statuses = await rate(n, raw)
            r3, _ = await rate(2 * n, via_client)
            r4, _ = await rate(3 * n, raw)
            r_client, r_raw = (r1 + r3) / 2, (r2 + r4) / 2
    finally:
        await client.close()
        dns.stop()
        await site.stop()
    print(f"{n} lookups x2, {args.sessions} in flight: PresenceLookup {r_client:.0f}/s "
          f"(answers {sorted(states)}), bare aiohttp POST {r_raw:.0f}/s "
          f"(answers {sorted(statuses)}), load average {os.getloadavg()[0]:.2f}")
    per = {k: [1000 * t / (2 * n) for t in v] for k, v in cpu.items()}
    print(f"CPU per lookup: PresenceLookup {per['client'][0]:.3f} ms + service "
          f"{per['server'][0]:.3f} ms; bare POST {per['client'][1]:.3f} ms + service "
          f"{per['server'][1]:.3f} ms")
    return 0


def wait_no_connections(ip: str, port: int, timeout: float) -> None:
    """Wait until no established TCP connection has ip:port as its local end."""
    local = f"{socket.inet_aton(ip)[::-1].hex().upper()}:{port:04X}"

    def established() -> int:
        with open("/proc/net/tcp") as f:
            return sum(1 for line in f.readlines()[1:]
                       if line.split()[1] == local and line.split()[3] == "01")
    deadline = time.monotonic() + timeout
    while (left := established()) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        raise RuntimeError(f"{left} connections to {ip}:{port} still open after {timeout} s")


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy so far (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def states_in_log(text: str) -> dict[str, int]:
    counts = {"yes": 0, "no": 0, "unknown": 0}
    for m in re.finditer(r"X-Sender-Online for \S+: (yes|no|unknown)", text):
        counts[m.group(1)] += 1
    return counts


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=400, help="mails per run (default 400)")
    p.add_argument("--sessions", type=int, default=10, help="concurrent SMTP sessions")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    p.add_argument("--dns-ttl", type=int, default=3600,
                   help="TTL of the _mailtalk record (default 3600, as `mailtalk dns` "
                        "publishes it; 0: a DNS query for every mail)")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help="comma-separated subset to run (e.g. mailtalk, for profiling); "
                        "ratios need floor")
    p.add_argument("--lookup-concurrency", type=int, default=0,
                   help="the filter's [filter] lookup_concurrency_per_domain "
                        "(default: the filter's default)")
    p.add_argument("--client-only", action="store_true",
                   help="measure the lookup client alone against the presence service")
    args = p.parse_args()
    if args.client_only:
        return await client_only(args)
    if os.geteuid() != 0:
        print("filter_bench: needs root (private Postfix instances)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="mailtalk-filter-bench-"))
    chmod_chain(base)
    bench = Bench(base, args)
    warm = max(50, args.messages // 4)
    try:
        # Every mail of every run has a sender of its own, whatever the configuration.
        configs = tuple(c for c in CONFIGS if c in args.configs.split(","))
        await bench.setup(len(configs) * (warm + args.rounds * args.messages), configs)
        for config in configs:
            bench.run(config, warm)
        rates: dict[str, list[float]] = {c: [] for c in configs}
        for r in range(args.rounds):
            order = configs[r % len(configs):] + configs[:r % len(configs)]
            for config in order:
                rates[config].append(bench.measure(config, args.messages))
                print(f"round {r + 1} {config:<8} {rates[config][-1]:7.1f} mails/s", flush=True)
        answered = bench.answers.get("mailtalk", {"yes": 0, "no": 0, "unknown": 0})
        load = os.getloadavg()
    finally:
        await bench.teardown()
        if os.environ.get("KEEP"):
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    floor = statistics.median(rates["floor"]) if rates.get("floor") else float("nan")
    print(f"\n{args.messages} mails per run, {args.sessions} sessions, {args.rounds} rounds "
          f"(median), load average {load[0]:.2f}")
    print(f"{'config':<10}{'mails/s':>10}{'vs floor':>10}{'per round':>18}{'filter CPU':>12}"
          f"{'presence CPU':>14}{'machine CPU':>13}")
    for config in configs:
        rate = statistics.median(rates[config])
        per = {k: 1000 * v / bench.mails[config] for k, v in bench.cpu[config].items()}
        # Each round's rate over the floor's in the same round: the machine's load
        # drifts over a run, and a round's configurations ran within seconds.
        paired = sorted(a / b for a, b in zip(rates[config], rates.get("floor", [])))
        rounds = (f"{statistics.median(paired):.2f}x {paired[0]:.2f}-{paired[-1]:.2f}"
                  if paired else "-")
        print(f"{config:<10}{rate:10.1f}{rate / floor:9.2f}x{rounds:>18}{per['filter']:9.2f} ms"
              f"{per['presence']:11.2f} ms{per['machine']:10.2f} ms")
    print("(vs floor: median rate over the floor's median; per round: the median of each "
          "round's ratio, and their range)")
    print("(CPU: milliseconds of the process's user+system time per mail; machine: of all "
          f"{os.cpu_count()} cores, this benchmark's load generator and Postfix included, "
          "until the last mail reached the sink)")
    print(f"mailtalk: X-Sender-Online of the measured runs: {answered['no']} no, "
          f"{answered['yes']} yes, {answered['unknown']} unknown "
          f"(of {args.rounds * args.messages} mails); no-lookup: mails without our "
          f"headers through the same filter (no lookup), for scale")
    lookups = [bench.answers[c] for c in ("mailtalk", "no-notice") if c in configs]
    if any(a["unknown"] or a["no"] + a["yes"] != args.rounds * args.messages for a in lookups):
        print("filter_bench: not every mail got a live answer: the figure is not valid",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
