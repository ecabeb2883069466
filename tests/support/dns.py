"""A real DNS server for tests: dnsmasq on a loopback address and port.

It answers for `*.test` only (`--local=/test/`: anything else is NXDOMAIN at once,
never forwarded), from TXT records given in Python. Restart with other records
with `set_records()`. Point mailtalk at it with `[dns] nameservers = ["ADDR:PORT"]`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from .wait import free_udp_port, wait_for

log = logging.getLogger("tests.dns")

DNSMASQ = "/usr/sbin/dnsmasq"


def available() -> str | None:
    """None when dnsmasq can run here, else the reason it cannot."""
    if shutil.which(DNSMASQ) is None:
        return f"{DNSMASQ} is missing (apt-get install dnsmasq-base)"
    if os.geteuid() != 0:
        return "dnsmasq is started with --user=root (needs root)"
    return None


class Dnsmasq:
    """dnsmasq answering TXT records (and A records if given) for names under .test.

    A TXT value is one string, or a list of strings (one record of several strings).
    """

    def __init__(self, address: str, port: int | None = None,
                 txt_records: dict[str, str | list[str]] | None = None,
                 a_records: dict[str, str] | None = None,
                 log_dir: str | os.PathLike[str] | None = None) -> None:
        self.address = address
        self.port = port or free_udp_port(address)
        self.txt_records = dict(txt_records or {})
        self.a_records = dict(a_records or {})
        self.log_path = Path(log_dir, f"dnsmasq-{address}.log") if log_dir else None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        """`ADDR:PORT`, the form `[dns] nameservers` takes."""
        return f"{self.address}:{self.port}"

    def argv(self) -> list[str]:
        args = [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", "--no-poll", "--bind-interfaces",
                f"--listen-address={self.address}", f"--port={self.port}",
                "--user=root", "--group=root", "--local=/test/",
                "--pid-file=", "--log-facility=-", "--log-queries"]
        for name, value in self.txt_records.items():
            args.append(f"--txt-record={name},{_txt_strings(value)}")
        for name, ip in self.a_records.items():
            args.append(f"--host-record={name},{ip}")
        return args

    def start(self, timeout: float = 10.0) -> None:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT)
        finally:
            if self.log_path:
                out.close()
        wait_for(self.answers, timeout=timeout,
                 what=f"dnsmasq on {self.nameserver} to answer")
        log.info("dnsmasq on %s with %d TXT record(s)", self.nameserver, len(self.txt_records))

    def answers(self) -> bool:
        """True when the server answers a query (any answer, NXDOMAIN included)."""
        if self._proc is None or self._proc.poll() is not None:
            raise AssertionError(f"dnsmasq exited with {self._proc and self._proc.returncode}"
                                 f"{self._log_tail()}")
        import dns.message
        import dns.query
        q = dns.message.make_query("probe.test.", "TXT")
        try:
            dns.query.udp(q, self.address, port=self.port, timeout=0.3)
            return True
        except Exception:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
        self._proc = None

    def set_records(self, txt_records: dict[str, str | list[str]],
                    a_records: dict[str, str] | None = None) -> None:
        """Restart on the same address and port, answering these records instead."""
        self.stop()
        self.txt_records = dict(txt_records)
        if a_records is not None:
            self.a_records = dict(a_records)
        self.start()

    def resolver(self):  # -> dns.resolver.Resolver
        """A dnspython resolver that asks this server only."""
        import dns.resolver
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [self.address]
        r.port = self.port
        r.timeout = r.lifetime = 2.0
        return r

    def _log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return ":\n" + self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def __enter__(self) -> "Dnsmasq":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _txt_strings(value: str | list[str]) -> str:
    """dnsmasq's --txt-record takes the record's strings separated by commas and
    has no way to escape one: a list gives several strings, a comma is refused."""
    parts = [value] if isinstance(value, str) else list(value)
    for part in parts:
        if "," in part:
            raise ValueError(f"dnsmasq cannot serve a TXT string with a comma: {part!r}")
    return ",".join(parts)


def mailtalk_txt(api: str, key_file: Path | str | None = None) -> str:
    """The value of a `_mailtalk.<domain>` TXT record for a presence service base URL;
    with `key_file`, the site's lookup signing key (made now if missing, as the
    site's filter would at start) as `k=`, as `mailtalk dns` prints it."""
    if key_file is None:
        return f"v=mailtalk1; api={api}"
    from mailtalk.lookup_signing import load_or_create_signing_key, public_key_text
    return f"v=mailtalk1; api={api}; k={public_key_text(load_or_create_signing_key(Path(key_file)))}"
