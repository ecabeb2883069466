"""Shared pieces for the mail-path benchmarks: Postfix's smtp-sink and smtp-source,
a private Postfix relay that sends everything to the sink, and an SMTP load
generator that logs in with SASL (smtp-source cannot).

A benchmark measures a baseline and the thing under test in the same run and
prints the ratio, so that the machine's speed cancels out:

    sink = SmtpSink("127.0.10.20").start()
    relay = relay_instance(base, "relay", "127.0.10.21", "a.test", sink, users={...})
    relay.start()
    t = submit_load(relay.address, relay.submission_port, n=500, concurrency=8,
                    auth=("alice@a.test", "pw"))
    sink.wait_count(500)
    ...
    relay.stop(); sink.stop()

Runs as root (Postfix instances); the harness itself is tests/support/.
"""

from __future__ import annotations

import logging
import re
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    # Appended, not prepended: the repo root's `milter/` folder must never shadow
    # pymilter's `milter` extension (a namespace folder loses to it this way).
    sys.path.append(str(_ROOT))

from tests.support.postfix import PostfixInstance, chmod_chain  # noqa: E402
from tests.support.wait import free_port, wait_for, wait_port  # noqa: E402

__all__ = ["SmtpSink", "relay_instance", "submit_load", "smtp_source", "bench_message",
           "PostfixInstance", "chmod_chain", "free_port", "wait_for", "wait_port"]

log = logging.getLogger("bench.support")

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"


class SmtpSink:
    """Postfix's smtp-sink on address:port, counting the messages it received."""

    def __init__(self, address: str, port: int | None = None, backlog: int = 256) -> None:
        self.address = address
        self.port = port or free_port(address)
        self.backlog = backlog
        self._count = 0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> "SmtpSink":
        # -c: counters on stdout ("sess=N quit=N mesg=N" + CR after each event);
        # -u nobody: smtp-sink refuses to run as root.
        self._proc = subprocess.Popen(
            [SMTP_SINK, "-c", "-u", "nobody", f"{self.address}:{self.port}", str(self.backlog)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_port(self.address, self.port, timeout)
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        buf = b""
        while chunk := self._proc.stdout.read1(4096):
            buf += chunk
            *done, buf = re.split(rb"[\r\n]", buf)
            for line in reversed(done):
                m = re.search(rb"mesg=(\d+)", line)
                if m:
                    with self._lock:
                        self._count = int(m.group(1))
                    break

    @property
    def count(self) -> int:
        """Messages received so far (each DATA that ended with ".")."""
        with self._lock:
            return self._count

    def wait_count(self, n: int, timeout: float = 120.0) -> None:
        wait_for(lambda: self.count >= n, timeout=timeout, interval=0.02,
                 what=f"smtp-sink on {self.address}:{self.port} to count {n} (has {self.count})")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> "SmtpSink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def relay_instance(base_dir: str | Path, name: str, address: str, domain: str,
                   sink: SmtpSink, users: dict[str, str] | None = None,
                   submission_port: int | None = None) -> PostfixInstance:
    """A private Postfix (not started) that relays every mail to the sink.

    With `users`, it also has a SASL submission port (`.submission_port`). Its
    MX port (`.smtp_port`) accepts mail for any domain from loopback (mynetworks
    127.0.0.0/8), so smtp-source can feed it without logging in.
    """
    base = Path(base_dir)
    base.mkdir(parents=True, exist_ok=True)
    chmod_chain(base)
    inst = PostfixInstance(base, name, address, domain)
    inst.postconf(
        mynetworks="127.0.0.0/8",
        relayhost=f"[{sink.address}]:{sink.port}",
        default_transport="smtp",
        # Benchmarks measure mail flow, not Postfix's back-off: keep concurrency up.
        default_destination_concurrency_limit="20",
        smtp_destination_concurrency_limit="20",
        default_destination_recipient_limit="50",
        default_process_limit="100",
        smtpd_client_restrictions="",
    )
    if users is not None:
        inst.enable_sasl_submission(submission_port, users)
    return inst


def bench_message(i: int, sender: str, rcpt: str, body_bytes: int = 2000) -> bytes:
    """A plain text message of about `body_bytes`, CRLF line ends."""
    line = b"The quick brown fox jumps over the lazy dog 0123456789.\r\n"
    body = line * max(1, body_bytes // len(line))
    head = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: bench {i}\r\n"
            f"Message-ID: <bench-{i}-{time.monotonic_ns()}@bench.test>\r\n"
            "Date: Sun, 29 Nov 2026 07:00:00 +0000\r\n\r\n").encode()
    return head + body


def submit_load(host: str, port: int, n: int, concurrency: int,
                auth: tuple[str, str] | None, sender: str | None = None,
                rcpts: list[str] | None = None,
                make_message: Callable[[int], bytes] | None = None,
                timeout: float = 60.0) -> float:
    """Submit n messages over `concurrency` SMTP sessions (threads), each session
    logging in once (when `auth` is given) and sending its share; return elapsed
    seconds from the first connection to the last accepted message.
    Raises on any refusal: a benchmark that lost mail has no figure.
    """
    sender = sender or (auth[0] if auth else "bench@a.test")
    rcpts = rcpts or ["bob@b.test"]
    make = make_message or (lambda i: bench_message(i, sender, rcpts[0]))
    messages = [make(i) for i in range(n)]          # built before the clock starts
    shares = [messages[k::concurrency] for k in range(concurrency)]
    errors: list[BaseException] = []

    def session(share: list[bytes]) -> None:
        try:
            ready.wait()
            with smtplib.SMTP(host, port, timeout=timeout) as s:
                s.ehlo("bench.test")
                if auth:
                    s.login(*auth)
                for msg in share:
                    refused = s.sendmail(sender, rcpts, msg)
                    if refused:
                        raise RuntimeError(f"refused: {refused}")
        except BaseException as e:  # reported to the caller below
            errors.append(e)

    threads = [threading.Thread(target=session, args=(share,)) for share in shares if share]
    ready = threading.Barrier(len(threads) + 1)     # all connect at once, then the clock
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} session(s) failed; first: {errors[0]!r}")
    return elapsed


def smtp_source(host: str, port: int, n: int, concurrency: int,
                sender: str = "bench@a.test", rcpt: str = "bob@b.test",
                size: int | None = None, timeout: float = 300.0) -> float:
    """Postfix's smtp-source (no AUTH): n messages over `concurrency` parallel
    sessions, one message per session as a mail client would; elapsed seconds."""
    argv = [SMTP_SOURCE, "-m", str(n), "-s", str(concurrency), "-f", sender, "-t", rcpt]
    if size:
        argv += ["-l", str(size)]
    argv.append(f"{host}:{port}")
    start = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({r.returncode}): {r.stderr}{r.stdout}")
    return elapsed


def wait_drained(inst: PostfixInstance, sink: SmtpSink, n: int, timeout: float = 120.0) -> float:
    """Wait until the sink has counted n messages and the relay's queue is empty;
    return the seconds waited."""
    start = time.perf_counter()
    sink.wait_count(n, timeout)
    inst.wait_queue_empty(timeout=max(5.0, timeout - (time.perf_counter() - start)),
                          flush=False)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Self-check and baseline figures of the harness itself (no mailtalk):
    `python bench/support.py [-n 500] [-c 8]` as root."""
    import argparse
    import shutil
    import tempfile
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("-n", type=int, default=500, help="messages per run")
    p.add_argument("-c", type=int, default=8, help="concurrent SMTP sessions")
    args = p.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="mailtalk-bench-support-"))
    sink = SmtpSink("127.0.10.30").start()
    relay = relay_instance(base, "relay", "127.0.10.31", "a.test", sink,
                           users={"alice@a.test": "bench-pw"})
    try:
        relay.start()
        t_sink = smtp_source(sink.address, sink.port, args.n, args.c)
        sink.wait_count(args.n)
        t_src = smtp_source(relay.address, relay.smtp_port, args.n, args.c)
        t_src += wait_drained(relay, sink, 2 * args.n)
        t_sasl = submit_load(relay.address, relay.submission_port, args.n, args.c,
                             auth=("alice@a.test", "bench-pw"))
        t_sasl += wait_drained(relay, sink, 3 * args.n)
    finally:
        relay.stop()
        sink.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.n} messages, {args.c} sessions")
    for name, t in (("smtp-source -> smtp-sink", t_sink),
                    ("smtp-source -> Postfix relay -> sink", t_src),
                    ("SASL submit_load -> Postfix relay -> sink", t_sasl)):
        print(f"{name:44s} {t:7.2f} s {args.n / t:8.0f} msg/s  x{t / t_sink:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
