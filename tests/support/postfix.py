"""A private Postfix instance for tests and benchmarks (never the system one).

Each instance has its own config, queue and data directories under `base_dir`,
listens only on its own loopback address (one simulated host per 127.x.y.z), logs to
its own `maillog`, and retries deferred mail within seconds. How this was made to
work here is in /work/shared/TESTING-NOTES.md; every setting below follows it.

Typical use (tests get instances from the `postfix_factory` fixture):

    mx = PostfixInstance(tmp, "b", "127.0.10.3", "b.test")
    mx.local_maildir(["b.test"])
    mx.start()
    ... mx.wait_delivered("bob@b.test", 1) ...
    mx.stop()
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Iterable

from .message import header_values, split_message  # noqa: F401 (re-exported)
from .postfix_conf import (MASTER_CF, POSTCONF, POSTFIX, POSTQUEUE, _alive, available,  # noqa: F401
                           base_settings, chmod_chain, logical_lines, sasl_smtpd_conf,
                           submission_service)
from .wait import free_port, port_open, wait_for

log = logging.getLogger("tests.postfix")

SENDMAIL = "/usr/sbin/sendmail"
SASLPASSWD2 = "/usr/sbin/saslpasswd2"

# Unix user that owns delivered Maildirs (virtual(8) refuses uids below 100).
MAILDIR_USER = "nobody"

_STARTED: set["PostfixInstance"] = set()     # running instances, for the atexit net


class PostfixError(RuntimeError):
    """A Postfix command failed; the message holds its output and the maillog's tail."""


class PostfixInstance:
    """One private Postfix, listening on `address` (SMTP on `smtp_port`)."""

    def __init__(self, base_dir: str | os.PathLike[str], name: str, address: str,
                 domain: str, smtp_port: int | None = None) -> None:
        self.name = name
        self.address = address
        self.domain = domain
        self.dir = Path(base_dir, f"postfix-{name}").resolve()
        self.config_dir = self.dir / "etc"
        self.queue_dir = self.dir / "queue"
        self.data_dir = self.dir / "data"
        self.mail_dir = self.dir / "mail"
        self.maillog_path = self.dir / "maillog"
        self.smtp_port = smtp_port or free_port(address)
        self.submission_port: int | None = None
        self._transport: dict[str, str] = {}
        self._running = False
        self._started_once = False
        self._create()

    # --- set-up ---------------------------------------------------------

    def _create(self) -> None:
        for d in (self.dir, self.config_dir, self.queue_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        chmod_chain(self.dir)
        pf = pwd.getpwnam("postfix")
        os.chown(self.data_dir, pf.pw_uid, pf.pw_gid)
        self.maillog_path.touch()
        (self.config_dir / "main.cf").write_text("")
        (self.config_dir / "master.cf").write_text(
            MASTER_CF + f"{self.address}:{self.smtp_port} inet n - n - - smtpd\n")
        self.postconf(**base_settings(self.name, self.domain, self.address, self.dir,
                                      self.config_dir, self.queue_dir, self.data_dir,
                                      self.maillog_path))

    def postconf(self, **settings: str | int) -> None:
        """Set main.cf parameters (`postconf -c DIR -e key=value ...`)."""
        if not settings:
            return
        args = [f"{k}={v}" for k, v in settings.items()]
        self._run([POSTCONF, "-c", str(self.config_dir), "-e", *args])

    def get(self, key: str) -> str:
        """The effective value of a main.cf parameter (`postconf -h`)."""
        return self._run([POSTCONF, "-c", str(self.config_dir), "-h", key]).strip()

    def master_add(self, text: str) -> None:
        """Append master.cf lines (services, with their `-o` lines) as they are."""
        with open(self.config_dir / "master.cf", "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def master_text(self) -> str:
        return (self.config_dir / "master.cf").read_text()

    def apply_snippet(self, path: str | os.PathLike[str], **subs: str | int) -> None:
        """Apply one of the deploy/postfix files as a postmaster would.

        `*main.cf` files: each `key = value` line goes through postconf (comments
        and blank lines are skipped, continuation lines joined). `*master.cf`
        files: appended to master.cf. In both, `{name}` placeholders are replaced
        by `subs` first (the snippets carry none; this lets a test adapt a copy).
        Tests then override addresses and ports with postconf() / master_replace().
        """
        text = Path(path).read_text()
        for key, value in subs.items():
            text = text.replace("{" + key + "}", str(value))
        if Path(path).name.endswith("master.cf"):
            self.master_add(text)
            return
        settings: dict[str, str] = {}
        for line in logical_lines(text):
            key, sep, value = line.partition("=")
            if not sep:
                raise ValueError(f"{path}: not a `key = value` line: {line!r}")
            settings[key.strip()] = value.strip()
        self.postconf(**settings)

    def master_replace(self, old: str, new: str) -> None:
        """Replace text in master.cf (e.g. a snippet's 127.0.0.1:10026 by a test port)."""
        p = self.config_dir / "master.cf"
        text = p.read_text()
        if old not in text:
            raise ValueError(f"{old!r} is not in {p}")
        p.write_text(text.replace(old, new))

    def enable_sasl_submission(self, port: int | None = None,
                               users: dict[str, str] | None = None) -> int:
        """A submission service on address:port that needs SASL log-in (Cyrus sasldb).

        `users` maps login to password. A login `alice@a.test` is stored as user
        `alice` in realm `a.test` (saslpasswd2 -u), which is how the client logs in;
        a login without `@` is stored in the realm of this instance's domain and the
        server appends that realm (smtpd_sasl_local_domain). Returns the port.
        """
        port = port or free_port(self.address)
        self.submission_port = port
        sasl_dir = self.config_dir / "sasl"
        sasl_dir.mkdir(exist_ok=True)
        db = self.config_dir / "sasldb2"
        (sasl_dir / "smtpd.conf").write_text(sasl_smtpd_conf(db))
        self.add_sasl_users(users or {})
        self.postconf(
            smtpd_sasl_type="cyrus",
            smtpd_sasl_path="smtpd",
            cyrus_sasl_config_path=str(sasl_dir),
            smtpd_sasl_local_domain=self.domain,
            smtpd_sasl_security_options="noanonymous",
            broken_sasl_auth_clients="no",
        )
        self.master_add(submission_service(self.address, port))
        return port

    def add_sasl_users(self, users: dict[str, str]) -> None:
        """Add or change SASL log-ins (works while running: sasldb is read per log-in)."""
        db = self.config_dir / "sasldb2"
        for login, password in users.items():
            user, at, realm = login.rpartition("@")
            if not at:
                user, realm = login, self.domain
            self._run([SASLPASSWD2, "-p", "-c", "-f", str(db), "-u", realm, user],
                      input=password)
        if db.exists():
            # Unreadable by postfix: smtpd silently falls back to /etc/sasldb2.
            pf = pwd.getpwnam("postfix")
            os.chown(db, 0, pf.pw_gid)
            db.chmod(0o640)

    def local_maildir(self, domains: Iterable[str]) -> None:
        """Deliver mail for `domains` into one Maildir per domain, mail/<domain>/,
        so that a test can read the delivered bytes (delivered(), wait_delivered()).

        One catch-all Maildir per domain, because virtual(8) allows no regexp
        substitution in its maps; virtual(8) prepends `Delivered-To: <rcpt>` to
        each copy, and delivered(rcpt) picks that recipient's copies by it.
        """
        domains = [d.lower() for d in domains]
        self.mail_dir.mkdir(exist_ok=True)
        nobody = pwd.getpwnam(MAILDIR_USER)
        os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)
        maps = self.config_dir / "virtual_mailbox"
        maps.write_text("".join(f"@{d} {d}/\n" for d in domains))
        self.postconf(
            virtual_mailbox_domains=" ".join(domains),
            virtual_mailbox_base=str(self.mail_dir),
            virtual_mailbox_maps=f"texthash:{maps}",
            virtual_uid_maps=f"static:{nobody.pw_uid}",
            virtual_gid_maps=f"static:{nobody.pw_gid}",
            virtual_minimum_uid=str(min(100, nobody.pw_uid)),
        )

    def relay_to(self, domain: str, host: str, port: int) -> None:
        """Send mail for `domain` to host:port over SMTP (a texthash transport map:
        no postmap needed, re-read by Postfix on reload/restart)."""
        self._transport[domain] = f"smtp:[{host}]:{port}"
        path = self.config_dir / "transport"
        path.write_text("".join(f"{d} {t}\n" for d, t in self._transport.items()))
        self.postconf(transport_maps=f"texthash:{path}")
        if self._running:
            self.reload()

    # --- lifecycle ------------------------------------------------------

    @property
    def master_pid_file(self) -> Path:
        return self.queue_dir / "pid" / "master.pid"

    def master_pid(self) -> int | None:
        try:
            pid = int(self.master_pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def start(self, timeout: float = 20.0) -> None:
        """Start the instance and wait until every inet service answers."""
        if self._started_once:
            # The queue is set up: skip postfix-script's slow integrity checks
            # (a second or more) as Postfix's own `quick-start` file allows.
            (self.queue_dir / "quick-start").touch()
        self._run([POSTFIX, "-c", str(self.config_dir), "start"])
        self._started_once = True
        self._running = True
        _STARTED.add(self)
        for host, port in self.inet_services():
            wait_for(lambda: port_open(host, port), timeout=timeout,
                     what=f"Postfix {self.name} on {host}:{port}\n{self.maillog_tail()}")
        log.info("postfix %s started on %s:%s", self.name, self.address, self.smtp_port)

    def reload(self) -> None:
        self._run([POSTFIX, "-c", str(self.config_dir), "reload"])

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the instance and wait until its master process is gone.

        Does what `postfix stop` does (SIGTERM to the master, which passes it to
        its process group), but polls instead of the script's `sleep 1`, and as
        the script does, kills the process group if it does not stop in time.
        """
        pid = self.master_pid()
        if pid is None:
            self._running = False
            _STARTED.discard(self)
            return
        os.kill(pid, signal.SIGTERM)
        try:
            wait_for(lambda: not _alive(pid), timeout=timeout, interval=0.02,
                     what=f"Postfix {self.name} to stop")
        except AssertionError:
            log.warning("postfix %s did not stop on SIGTERM: killing it", self.name)
            try:
                os.killpg(pid, signal.SIGKILL)     # master is a session leader
            except OSError:
                pass
        # Children that were busy exit when they see the master gone.
        for host, port in self.inet_services():
            wait_for(lambda: not port_open(host, port), timeout=timeout,
                     what=f"{host}:{port} of Postfix {self.name} to close")
        self._running = False
        _STARTED.discard(self)
        log.info("postfix %s stopped", self.name)

    def inet_services(self) -> list[tuple[str, int]]:
        """(address, port) of every `ADDR:PORT inet` service in master.cf."""
        out = []
        for line in self.master_text().splitlines():
            m = re.match(r"^\[?([0-9.]+)\]?:(\d+)\s+inet\s", line)
            if m:
                out.append((m.group(1), int(m.group(2))))
        return out

    # --- queue and log --------------------------------------------------

    def flush(self) -> None:
        """Ask the queue manager to retry every deferred mail now."""
        self._run([POSTQUEUE, "-c", str(self.config_dir), "-f"])

    def queue(self) -> list[dict]:
        """The queue as `postqueue -j` gives it: one dict per message."""
        out = self._run([POSTQUEUE, "-c", str(self.config_dir), "-j"])
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_queue_empty(self, timeout: float = 30.0, flush: bool = True) -> None:
        def empty() -> bool:
            if flush:
                self.flush()
            return not self.queue()
        wait_for(empty, timeout=timeout, interval=0.2,
                 what=f"the queue of Postfix {self.name} to empty")

    def maillog(self) -> str:
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def maillog_tail(self, lines: int = 30) -> str:
        return "\n".join(self.maillog().splitlines()[-lines:])

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until a maillog line matches the regular expression `pattern`."""
        rx = re.compile(pattern)
        return wait_for(lambda: rx.search(self.maillog()), timeout=timeout,
                        what=f"/{pattern}/ in the maillog of Postfix {self.name}")

    # --- delivered mail -------------------------------------------------

    def maildir(self, rcpt: str) -> Path:
        """The Maildir that holds mail for rcpt's domain (see local_maildir())."""
        return self.mail_dir / rcpt.rpartition("@")[2].lower()

    def delivered(self, rcpt: str) -> list[bytes]:
        """The raw bytes of every mail delivered to `rcpt`, oldest first.

        As Maildir stores them: LF line ends, with `Delivered-To` and `Return-Path`
        prepended by virtual(8) and Postfix's Received header(s) above the
        message's own headers. split_message() separates headers and body.
        """
        new = self.maildir(rcpt) / "new"
        if not new.is_dir():
            return []
        want = b"delivered-to: " + rcpt.lower().encode() + b"\n"
        files = sorted(new.iterdir(), key=lambda p: (p.stat().st_mtime, p.name))
        out = []
        for p in files:
            data = p.read_bytes()
            head = data.split(b"\n\n", 1)[0].lower() + b"\n"
            if want in head:
                out.append(data)
        return out

    def wait_delivered(self, rcpt: str, count: int = 1, timeout: float = 30.0,
                       flush_also: Iterable["PostfixInstance"] = ()) -> list[bytes]:
        """Wait until at least `count` mails were delivered to `rcpt`; return them all.

        Flushes this instance's queue (and those of `flush_also`, e.g. the sending
        instance) while waiting, so a mail deferred once (a hop that was not yet
        up) is retried at once instead of after the back-off.
        """
        others = list(flush_also)

        def check() -> list[bytes] | None:
            got = self.delivered(rcpt)
            if len(got) >= count:
                return got
            for inst in [self, *others]:
                if inst.master_pid() is not None and inst.queue():
                    inst.flush()
            return None
        try:
            return wait_for(check, timeout=timeout, interval=0.1,
                            what=f"{count} mail(s) for {rcpt} at Postfix {self.name}")
        except AssertionError as e:
            raise AssertionError(f"{e}\nqueue: {self.queue()}\n"
                                 f"maillog:\n{self.maillog_tail()}") from None

    def sendmail(self, message: bytes, sender: str, rcpts: list[str]) -> None:
        """Submit a message locally (sendmail -> postdrop -> pickup: non_smtpd path)."""
        self._run([SENDMAIL, "-C", str(self.config_dir), "-i", "-f", sender, "--", *rcpts],
                  input=message)

    # --- helpers --------------------------------------------------------

    def _run(self, argv: list[str], input: str | bytes | None = None) -> str:
        text = not isinstance(input, bytes)
        r = subprocess.run(argv, input=input, capture_output=True, text=text, timeout=60)
        out = r.stdout if text else r.stdout.decode(errors="replace")
        err = r.stderr if text else r.stderr.decode(errors="replace")
        if r.returncode != 0:
            raise PostfixError(f"{' '.join(argv)} failed ({r.returncode}): {err}{out}\n"
                               f"maillog:\n{self.maillog_tail()}")
        return out

    def remove(self) -> None:
        """Stop and delete the instance's directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<PostfixInstance {self.name} {self.address}:{self.smtp_port}>"


def _each(instances: Iterable[PostfixInstance], action: str) -> None:
    """Run `action` on every instance at once (Postfix takes about a second to
    start or stop; several instances need not wait for each other). Every one is
    tried; the errors are raised together afterwards."""
    insts = list(instances)
    errors: list[str] = []

    def run(inst: PostfixInstance) -> None:
        try:
            getattr(inst, action)()
        except Exception as e:  # keep going with the others
            errors.append(f"{inst}: {e}")
    threads = [threading.Thread(target=run, args=(i,)) for i in insts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise PostfixError("\n".join(errors))


def start_all(*instances: PostfixInstance) -> None:
    """Start several instances in parallel."""
    _each(instances, "start")


def wait_stopped(instances: Iterable[PostfixInstance]) -> None:
    """Stop every instance (in parallel), whatever happens to one of them."""
    _each(instances, "stop")


@atexit.register
def _stop_leftovers() -> None:
    # Safety net for benchmarks and crashed runs: never leave a Postfix running.
    for inst in list(_STARTED):
        try:
            inst.stop()
        except Exception:
            log.exception("could not stop %s", inst)
