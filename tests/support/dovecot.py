"""A private Dovecot for tests: Debian's dovecot-core, -lmtpd and -imapd with a
dovecot.conf of its own (`dovecot -c DIR/dovecot.conf`), never the system service.

    DIR/dovecot.conf   DIR/passwd (users, plain passwords)   DIR/dovecot.log
    /tmp/mt-dovecot-*/ base_dir: the master's sockets, and the LMTP socket `lmtp`
    DIR/mail/<domain>/<local>/   each user's Maildir, owned by `nobody`

LMTP listens on `address:lmtp_port` and on the unix socket `lmtp_socket`; IMAP (plain
LOGIN, no TLS: loopback only) on `address:imap_port`. Read back with `messages(user)`
or `wait_mail(user, message_id)`, as a mail client would (imaplib).

What Dovecot 2.3 answers, per recipient:
- a user not in the passwd file: `550 5.1.1 <x> User doesn't exist: x` at RCPT;
- a user whose Maildir cannot be made (`make_tempfail(user)` puts a file where the
  directory goes; `clear_tempfail(user)` removes it): `451 4.2.0 <x> Internal error
  occurred...` after DATA for that recipient only, the others delivered.

    d = Dovecot(base, {"bob@b.test": "pw"}).start()     # base: two_sites.make_base()
    ... [filter] lmtp_next = d.lmtp ...
    (copy,) = d.wait_mail("bob@b.test", "<id@a.test>")
    d.stop()
"""

from __future__ import annotations

import grp
import imaplib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from .postfix import chmod_chain
from .wait import free_port, port_open, wait_for

DOVECOT = "/usr/sbin/dovecot"
MAIL_USER = "nobody"


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not Path(DOVECOT).exists() or not Path("/usr/lib/dovecot/lmtp").exists():
        return "Dovecot (dovecot-lmtpd, dovecot-imapd) is not installed (scripts/setup --test)"
    return None


class Dovecot:
    def __init__(self, base_dir: Path, users: dict[str, str],
                 address: str = "127.0.14.60") -> None:
        self.dir = Path(base_dir, "dovecot").resolve()
        self.address = address
        self.users = dict(users)
        self.lmtp_port = free_port(address)
        self.imap_port = free_port(address)
        # base_dir holds unix sockets: a short path (108 bytes at most), not under a
        # test's long temporary directory.
        self.run_dir = Path(tempfile.mkdtemp(prefix="mt-dovecot-"))
        self.lmtp_socket = self.run_dir / "lmtp"
        self.auth_socket = self.run_dir / "auth-client"    # Dovecot's own, for log-ins
        self.mail_dir = self.dir / "mail"
        self.log_path = self.dir / "dovecot.log"
        self.conf = self.dir / "dovecot.conf"
        self._proc: subprocess.Popen[bytes] | None = None
        self._write()

    @property
    def lmtp(self) -> str:
        """HOST:PORT of the LMTP listener (for [filter] lmtp_next)."""
        return f"{self.address}:{self.lmtp_port}"

    def _write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        chmod_chain(self.dir)
        nobody = pwd.getpwnam(MAIL_USER)
        self.mail_dir.mkdir(exist_ok=True)
        os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)
        passwd = self.dir / "passwd"
        passwd.write_text("".join(
            f"{u}:{{PLAIN}}{pw}:{nobody.pw_uid}:{nobody.pw_gid}::{self._home(u)}::\n"
            for u, pw in self.users.items()))
        passwd.chmod(0o640)        # Dovecot's auth process reads it as group dovecot
        os.chown(passwd, 0, grp.getgrnam("dovecot").gr_gid)
        self.conf.write_text(f"""
base_dir = {self.run_dir}
state_dir = {self.dir / "state"}
log_path = {self.log_path}
info_log_path = {self.log_path}
protocols = lmtp imap
listen = {self.address}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 1
lmtp_save_to_detail_mailbox = no
recipient_delimiter =
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {self.address}
    port = {self.lmtp_port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = {self.address}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")

    def _home(self, user: str) -> Path:
        local, _, domain = user.partition("@")
        return self.mail_dir / domain / local

    # --- lifecycle

    def start(self, timeout: float = 20.0) -> "Dovecot":
        """Run the master in the foreground (-F) as our child: a daemonizing master
        would keep the pipes of a captured run open."""
        self.run_dir.mkdir(mode=0o755, exist_ok=True)
        with open(self.dir / "dovecot.stderr", "ab") as err:
            self._proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)],
                                          stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            wait_for(lambda: self._proc.poll() is None
                     and port_open(self.address, self.lmtp_port)
                     and port_open(self.address, self.imap_port) and self.lmtp_socket.exists(),
                     timeout=timeout, what=f"Dovecot at {self.address}")
        except AssertionError as e:
            self.stop()
            raise AssertionError(f"{e}\n{self.log_tail()}") from None
        return self

    def stop(self, timeout: float = 20.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)     # the master stops its children, then exits
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        wait_for(lambda: not port_open(self.address, self.lmtp_port), timeout=5,
                 what="Dovecot's LMTP port closed")
        shutil.rmtree(self.run_dir, ignore_errors=True)      # made again by start()

    def __enter__(self) -> "Dovecot":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- faults

    def make_tempfail(self, user: str) -> None:
        """A file where the user's Maildir goes: delivering to it fails, temporarily."""
        home = self._home(user)
        home.mkdir(parents=True, exist_ok=True)
        nobody = pwd.getpwnam(MAIL_USER)
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        os.chown(home.parent, nobody.pw_uid, nobody.pw_gid)
        (home / "Maildir").write_text("not a directory\n")

    def clear_tempfail(self, user: str) -> None:
        (self._home(user) / "Maildir").unlink()

    # --- reading, as a mail client does

    def messages(self, user: str) -> list[bytes]:
        """Every message in the user's INBOX, raw, over IMAP."""
        with imaplib.IMAP4(self.address, self.imap_port, timeout=10) as imap:
            imap.login(user, self.users[user])
            imap.select("INBOX", readonly=True)
            typ, data = imap.uid("SEARCH", None, "ALL")
            assert typ == "OK", data
            out = []
            for uid in data[0].split():
                typ, parts = imap.uid("FETCH", uid, "(BODY.PEEK[])")
                assert typ == "OK", parts
                out.append(next(p[1] for p in parts if isinstance(p, tuple)))
            return out

    def copies(self, user: str, message_id: str) -> list[bytes]:
        """The copies of `message_id` in the user's INBOX now."""
        return [m for m in self.messages(user) if _message_id(m) == message_id]

    def wait_mail(self, user: str, message_id: str, count: int = 1,
                  timeout: float = 30.0) -> list[bytes]:
        """The copies of `message_id` in the user's INBOX once there are `count`."""
        def got() -> list[bytes] | None:
            found = self.copies(user, message_id)
            return found if len(found) >= count else None
        try:
            return wait_for(got, timeout=timeout, interval=0.2,
                            what=f"{count} copy of {message_id} for {user}")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- dovecot:\n{self.log_tail(15)}") from None

    def thread_references(self, user: str) -> str:
        """The raw answer to `UID THREAD REFERENCES UTF-8 ALL`."""
        with imaplib.IMAP4(self.address, self.imap_port, timeout=10) as imap:
            imap.login(user, self.users[user])
            imap.select("INBOX", readonly=True)
            typ, data = imap.uid("THREAD", "REFERENCES", "UTF-8", "ALL")
            assert typ == "OK", data
            return b" ".join(d for d in data if d).decode()


def _message_id(raw: bytes) -> str | None:
    m = re.search(rb"(?im)^message-id:[ \t]*(\S+)", raw.split(b"\r\n\r\n", 1)[0])
    return m.group(1).decode() if m else None
