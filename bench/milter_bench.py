"""Throughput of a real Postfix with and without mailtalk's sending milter.

A private Postfix (127.0.11.6, domain a.test) relays everything to `smtp-sink`.
It has one SASL submission service per configuration, all made from
deploy/postfix/sender-master.cf (port and milter address adapted, no TLS):

    none        no milter
    inet        `mailtalk milter` on inet:  (TCP_NODELAY on, as shipped)
    unix        `mailtalk milter` on unix:
    inet-nagle  the same milter with TCP_NODELAY left off (the "before" figure)
    bare-inet   a bare pymilter milter that only adds two headers, over inet: and
    bare-unix   over unix: (the floor: what pymilter itself costs on this machine;
                pymilter leaves TCP_NODELAY off, this one sets it like mailtalk)

Both milters record every mail in their outbox and hand it over to a real
`mailtalk presence` service. A load generator (smtplib in threads: smtp-source
cannot AUTH; bench/support.py's submit_load) logs in once per session and
submits N messages over S concurrent sessions; a run's figure is N / (time until
Postfix accepted the last one). Every run starts with an empty queue. Runs are interleaved
(each round runs every configuration, in a rotated order) after a warm-up; the
result is each configuration's median rate as a ratio of the no-milter median.

    .venv/bin/python bench/milter_bench.py [--messages 2000] [--sessions 10]
        [--rounds 3] [--configs none,inet,unix,inet-nagle,bare-unix] [--no-presence]

Needs root, Debian's postfix (smtp-sink) and sasl2-bin, like the e2e tests.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from support import (SmtpSink, chmod_chain, free_port, relay_instance,  # bench/support.py
                     submit_load, wait_for, wait_port)
from tests.support.mailtalk import MailtalkService  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ADDR = "127.0.11.6"
SINK_ADDR = "127.0.11.7"
USER, PASSWORD = "alice@a.test", "bench-pw"
DEPLOY = ROOT / "deploy" / "postfix"
CONFIGS = ("none", "inet", "unix", "inet-nagle", "bare-inet", "bare-unix")

def submission_service(milter: str | None, port: int) -> str:
    """deploy/postfix/sender-master.cf's submission service, adapted as in
    tests/e2e/test_postfix_sending_milter.py."""
    text = (DEPLOY / "sender-master.cf").read_text()
    text = text[text.index("submission inet"):text.index("submissions inet")]
    text = re.sub(r"^submission inet n\s+-\s+y", f"{ADDR}:{port} inet n - n", text, flags=re.M)
    lines = [ln for ln in text.splitlines() if "smtpd_tls_" not in ln]
    lines = [ln.replace("inet:127.0.0.1:8894", milter) if milter else ln
             for ln in lines if milter or "smtpd_milters" not in ln]
    return "\n".join(lines).replace("syslog_name=postfix/submission",
                                    f"syslog_name=postfix/sub{port}") + "\n"


def cpu_seconds(svc: MailtalkService) -> float:
    """User + system CPU time of a service process so far."""
    if svc.proc is None:
        return 0.0
    fields = Path(f"/proc/{svc.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_nagle(config: str) -> int:
    """`mailtalk -c CONFIG milter` with TCP_NODELAY left off (the "before" figure)."""
    from mailtalk import cli
    from mailtalk_milter import milter_socket
    milter_socket.set_nodelay = lambda fd: None
    return cli.main(["-c", config, "milter"])


def serve_bare(socket: str) -> int:
    """A bare pymilter milter: two headers added at end-of-message, nothing else."""
    import Milter

    class Bare(Milter.Base):
        # Only the macros it needs at MAIL FROM, as mailtalk asks (@symlist): with
        # Postfix's full default list this milter ran at 0.23x over inet: (0.54x
        # with it; unix: no difference), measured here.
        @Milter.noreply
        @Milter.symlist("{auth_authen}", "i")
        def envfrom(self, mailfrom: str, *params: str) -> int:
            return Milter.CONTINUE

        @Milter.noreply
        def header(self, name: str, value: str) -> int:
            return Milter.CONTINUE

        def eom(self) -> int:
            self.addheader("X-Bare-1", "one")
            self.addheader("X-Bare-2", "two")
            return Milter.CONTINUE

    Milter.factory = Bare
    Milter.set_flags(Milter.ADDHDRS)
    # libmilter creates the socket with the umask: Postfix (user postfix) must be
    # able to connect, or it would run without the milter (default_action accept).
    os.umask(0o000)
    # TCP_NODELAY as mailtalk sets it (milter_socket.py), once runmilter() has
    # opened its listener: otherwise this floor would measure Nagle, not pymilter.
    from mailtalk_milter import milter_socket
    milter_socket.prepare(socket)
    before = milter_socket.listening_fds()

    def nodelay() -> None:
        wait_for(lambda: milter_socket.listening_fds() - before, timeout=10)
        milter_socket.tune(socket, before, "")
    if socket.startswith("inet"):
        threading.Thread(target=nodelay, daemon=True).start()
    Milter.runmilter("bare", socket, 30)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--no-presence", action="store_true",
                    help="no presence service: records stay in the outboxes (its cost left out)")
    ap.add_argument("--serve-nagle", metavar="CONFIG", help=argparse.SUPPRESS)
    ap.add_argument("--serve-bare", metavar="SOCKET", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_nagle:
        return serve_nagle(args.serve_nagle)
    if args.serve_bare:
        return serve_bare(args.serve_bare)
    configs = args.configs.split(",")

    base = Path(tempfile.mkdtemp(prefix="mailtalk-milter-bench-"))
    chmod_chain(base)
    key_file = base / "site.key"
    presence_port = free_port(ADDR)
    site = {"site": {"secret_file": str(key_file)}, "domains": {"names": ["a.test"]}}
    presence = MailtalkService(base, {**site, "presence": {
        "listen": f"{ADDR}:{presence_port}", "public_url": f"http://{ADDR}:{presence_port}"}},
        subcommand="presence", name="presence")
    milter_cfg = {"presence_api": f"http://{ADDR}:{presence_port}", "outbox_retry_max": 2}
    sockets = {"inet": (f"inet:{free_port(ADDR)}@{ADDR}", None),
               "unix": (f"unix:{base}/run/milter.sock", None),
               "inet-nagle": (f"inet:{free_port(ADDR)}@{ADDR}", "nagle"),
               "bare-inet": (f"inet:{free_port(ADDR)}@{ADDR}", "bare"),
               "bare-unix": (f"unix:{base}/run/bare.sock", "bare")}
    milters: dict[str, MailtalkService] = {}
    sink = SmtpSink(SINK_ADDR)
    mta = relay_instance(base, "bench", ADDR, "a.test", sink, users={USER: PASSWORD})
    try:
        if not args.no_presence:
            presence.start()
        for name in configs:
            if name == "none":
                continue
            spec, variant = sockets[name]
            svc = MailtalkService(base, {**site, "milter": {"socket": spec, **milter_cfg}},
                                  subcommand="milter", name=f"milter-{name}")
            if variant:                 # through serve_nagle() or serve_bare()
                argv = [sys.executable, __file__, f"--serve-{variant}",
                        str(svc.config_path) if variant == "nagle" else spec]
                import tests.support.mailtalk as tsm
                orig = tsm.mailtalk_argv
                tsm.mailtalk_argv = lambda cfg, *a, argv=argv: argv
                try:
                    svc.start()
                finally:
                    tsm.mailtalk_argv = orig
            else:
                svc.start()
            milters[name] = svc

        sink.start()

        ports: dict[str, int] = {}
        for name in configs:
            ports[name] = free_port(ADDR)
            milter = None
            if name != "none":
                spec = sockets[name][0]
                m = re.fullmatch(r"inet:(\d+)@(.+)", spec)
                milter = f"inet:{m.group(2)}:{m.group(1)}" if m else spec
            mta.master_add(submission_service(milter, ports[name]))
        mta.postconf(milter_default_action="accept", milter_protocol="6")
        mta.start()
        for p in ports.values():
            wait_port(ADDR, p)

        sent = 0

        def outbox_rows(name: str) -> int:
            with sqlite3.connect(milters[name].state_dir / "outbox.sqlite3") as db:
                return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

        def load(name: str, n: int) -> tuple[float, float | None, float, float]:
            """Seconds to submit; seconds after that until the outbox was empty; CPU
            seconds of the milter and of the presence service while submitting."""
            nonlocal sent
            cpu0 = cpu_seconds(milters[name]) if name in milters else 0.0
            pcpu0 = cpu_seconds(presence)
            secs = submit_load(ADDR, ports[name], n, args.sessions, auth=(USER, PASSWORD))
            t_end = time.perf_counter()
            mcpu = cpu_seconds(milters[name]) - cpu0 if name in milters else 0.0
            pcpu = cpu_seconds(presence) - pcpu0
            sent += n
            # Every run starts on an empty queue (the sink has them all) and, with
            # the presence service on, an empty outbox: no run pays for another's
            # hand-over.
            sink.wait_count(sent, timeout=300)
            wait_for(lambda: not mta.queue(), timeout=300, interval=0.2, what="queue drained")
            lag = None
            if name in milters and not name.startswith("bare") and not args.no_presence:
                wait_for(lambda: outbox_rows(name) == 0, timeout=300, interval=0.05,
                         what=f"the outbox of {name} to empty")
                lag = time.perf_counter() - t_end
            return secs, lag, mcpu, pcpu

        print(f"warm-up: {min(200, args.messages)} messages per configuration", flush=True)
        for name in configs:
            load(name, min(200, args.messages))

        rates: dict[str, list[float]] = {c: [] for c in configs}
        for r in range(args.rounds):
            order = configs[r % len(configs):] + configs[:r % len(configs)]
            for name in order:
                secs, lag, mcpu, pcpu = load(name, args.messages)
                rates[name].append(args.messages / secs)
                print(f"round {r + 1} {name:10s} {args.messages / secs:8.1f} msg/s  "
                      f"CPU ms/msg during the run: milter {mcpu / args.messages * 1000:.2f}, "
                      f"presence {pcpu / args.messages * 1000:.2f}"
                      + (f"; outbox empty {lag:.1f} s after the last mail" if lag else ""),
                      flush=True)

        # The outbox was on: every authenticated mail through a milter must reach
        # the presence service.
        with_milter = sum(1 for c in configs if c != "none" and not c.startswith("bare"))
        expected = with_milter * (args.messages * args.rounds + min(200, args.messages))

        def handed_over() -> int:
            return len(re.findall(r" recorded \(", presence.log()))
        if not args.no_presence:
            try:
                wait_for(lambda: handed_over() >= expected, timeout=120, interval=0.5,
                         what="records handed over")
            except AssertionError:
                pass
        pending = 0
        for name, svc in milters.items():
            if name.startswith("bare"):
                continue
            with sqlite3.connect(svc.state_dir / "outbox.sqlite3") as db:
                pending += db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

        base_rate = statistics.median(rates["none"]) if "none" in rates else None
        print()
        print(f"{args.messages} messages x {args.rounds} rounds, {args.sessions} sessions, "
              f"one login per session, SASL AUTH, outbox on")
        print(f"{'config':12s} {'median msg/s':>12s} {'ratio':>6s}  runs")
        for name in configs:
            med = statistics.median(rates[name])
            ratio = f"{med / base_rate:.2f}x" if base_rate else "-"
            runs = " ".join(f"{x:.0f}" for x in rates[name])
            print(f"{name:12s} {med:12.1f} {ratio:>6s}  {runs}")
        print(f"records handed over to the presence service: {handed_over()} of {expected}"
              f" (left in outboxes: {pending})")
        return 0
    finally:
        try:
            mta.stop()
        finally:
            sink.stop()
            for svc in milters.values():
                svc.kill() if not svc.running() else svc.stop()
            if presence.running():
                presence.stop()
            if os.environ.get("KEEP") is None:
                shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
