"""A private Sendmail for tests: Debian's sendmail-bin cannot be
installed beside Postfix, so `scripts/setup --test` unpacks it with `dpkg -x` into
.cache/sendmail/; this runs that binary with a sendmail.cf of its own, built with m4
from a test .mc plus the deploy/sendmail/*.mc lines as written (addresses replaced).

Each instance listens on its own loopback address, relays everything to one smart
host (the next site or a sink), never uses DNS (a hosts file of its own) and keeps
its queue, pid file and sasldb under its directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from .wait import free_port, port_open, wait_for

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "sendmail"
SENDMAIL = CACHE / "usr/libexec/sendmail/sendmail"
M4 = CACHE / "usr/bin/m4"
CF_DIR = CACHE / "usr/share/sendmail/cf"
SASLPASSWD2 = "/usr/sbin/saslpasswd2"


def unavailable() -> str | None:
    """None when a private Sendmail can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if not SENDMAIL.exists() or not M4.exists() or not CF_DIR.is_dir():
        return f"{CACHE} lacks sendmail-bin/sendmail-cf/m4 (run scripts/setup --test)"
    r = subprocess.run(["unshare", "--uts", "--mount", "true"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot make UTS/mount namespaces (unshare: {r.stderr.strip()[:200]})"
    r = subprocess.run(["ldd", str(SENDMAIL)], capture_output=True, text=True)
    if "not found" in r.stdout:
        return f"unpacked sendmail lacks libraries: {r.stdout.strip()} (apt-get install libwrap0)"
    return None


class SendmailInstance:
    def __init__(self, base_dir: Path, name: str, address: str, domain: str,
                 smart_host: tuple[str, int]) -> None:
        self.name, self.address, self.domain = name, address, domain
        self.dir = Path(base_dir, f"sendmail-{name}")
        self.port = free_port(address)
        self.msa_port: int | None = None
        self.smart_host = smart_host
        self.snippets: list[str] = []
        self.sasl_users: dict[str, str] = {}
        self.pid: int | None = None
        for d in (self.dir, self.dir / "mqueue", self.dir / "sasl"):
            d.mkdir(parents=True, exist_ok=True)
        (self.dir / "mqueue").chmod(0o700)

    def add_snippet(self, path: Path, replace: dict[str, str] | None = None) -> None:
        """A deploy/sendmail/*.mc file as written, with addresses and ports replaced."""
        text = path.read_text()
        for old, new in (replace or {}).items():
            assert old in text, f"{old!r} not in {path}"
            text = text.replace(old, new)
        self.snippets.append(text)

    def enable_msa(self, users: dict[str, str]) -> int:
        """A submission daemon on its own port, AUTH PLAIN/LOGIN from a sasldb."""
        self.msa_port = free_port(self.address)
        self.sasl_users = users
        return self.msa_port

    def _mc(self) -> str:
        d = self.dir
        host, port = self.smart_host
        lines = [
            f"include(`{CF_DIR}/m4/cf.m4')dnl",
            "VERSIONID(`mailtalk test')dnl",
            "OSTYPE(`linux')dnl",
            f"define(`confDOMAIN_NAME', `mx.{self.domain}')dnl",
            "define(`confDONT_PROBE_INTERFACES', `True')dnl",
            f"define(`QUEUE_DIR', `{d}/mqueue')dnl",
            f"define(`STATUS_FILE', `{d}/statistics')dnl",
            f"define(`confPID_FILE', `{d}/sendmail.pid')dnl",
            f"define(`confHOSTS_FILE', `{d}/hosts')dnl",
            f"define(`confSERVICE_SWITCH_FILE', `{d}/service.switch')dnl",
            f"define(`ALIAS_FILE', `{d}/aliases')dnl",
            f"define(`HELP_FILE', `{d}/helpfile')dnl",
            "define(`confLOG_LEVEL', `14')dnl",
            "define(`confTO_QUEUERETURN', `1h')dnl",
            "define(`confMIN_QUEUE_AGE', `0')dnl",
            "define(`confDELIVERY_MODE', `background')dnl",
            "define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl",
            # Test hosts only: relay everything to the smart host (the next site or
            # a sink); a real site lists its domains in relay-domains instead.
            f"define(`SMART_HOST', `relay:[{host}]')dnl",
            f"define(`RELAY_MAILER_ARGS', `TCP $h {port}')dnl",
            "FEATURE(`promiscuous_relay')dnl",
            "FEATURE(`nocanonify')dnl",
            "FEATURE(`accept_unresolvable_domains')dnl",
            "FEATURE(`no_default_msa')dnl",
            f"DAEMON_OPTIONS(`Port={self.port}, Addr={self.address}, Name=MTA')dnl",
        ]
        if self.msa_port:
            lines += [
                "define(`confAUTH_MECHANISMS', `PLAIN LOGIN')dnl",
                "TRUST_AUTH_MECH(`PLAIN LOGIN')dnl",
            ]
        body = "\n".join(lines) + "\n"
        for s in self.snippets:
            if self.msa_port:
                s = s.replace("Port=submission,", f"Port={self.msa_port}, Addr={self.address},")
            body += s
        return body + "MAILER(`smtp')dnl\n"

    def build(self) -> Path:
        d = self.dir
        (d / "hosts").write_text(f"127.0.0.1 localhost\n{self.address} mx.{self.domain}\n")
        (d / "service.switch").write_text("hosts files\naliases files\n")
        (d / "aliases").write_text("")
        (d / "helpfile").write_text("")
        (d / "statistics").write_text("")
        mc = d / "test.mc"
        mc.write_text(self._mc())
        r = subprocess.run([str(M4), str(mc)], capture_output=True, text=True)
        errors = [x for x in r.stderr.splitlines()
                  if x.strip() and "promiscuous_relay" not in x and "open" not in x
                  and "Internet" not in x]
        assert r.returncode == 0 and not errors, f"m4 failed: {r.stderr}"
        cf = d / "sendmail.cf"
        cf.write_text(r.stdout)
        cf.chmod(0o644)
        if self.sasl_users:
            db = d / "sasl" / "sasldb2"
            for login, pw in self.sasl_users.items():
                user, _, realm = login.rpartition("@")
                subprocess.run([SASLPASSWD2, "-p", "-c", "-f", str(db), "-u", realm, user],
                               input=pw, text=True, check=True)
        return cf

    def start(self, timeout: float = 20.0) -> None:
        cf = self.build()
        # Two namespaces of the sendmail process only, the machine stays untouched:
        # UTS, because Sendmail sleeps 60 s at start when the host name has no
        # domain ("vm"); mount, because Sendmail clears its environment (so Cyrus
        # SASL never sees SASL_CONF_PATH) and reads the default /etc/sasldb2: our
        # sasldb is bind-mounted there, for this process alone.
        script = f'hostname "mx.{self.domain}"'
        db = self.dir / "sasl" / "sasldb2"
        if self.sasl_users:
            script += f' && mount --bind "{db}" /etc/sasldb2'
        argv = ["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c",
                script + ' && exec "$0" "$@"', str(SENDMAIL), f"-C{cf}", "-bd", "-q2s"]
        with open(self.dir / "sendmail.out", "ab") as out:
            r = subprocess.run(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                               timeout=30)
        assert r.returncode == 0, f"sendmail -bd failed: {(self.dir / 'sendmail.out').read_text()}"
        ports = [self.port] + ([self.msa_port] if self.msa_port else [])
        for p in ports:
            wait_for(lambda: port_open(self.address, p), timeout=timeout,
                     what=f"sendmail {self.name} on {self.address}:{p}")
        self.pid = int((self.dir / "sendmail.pid").read_text().split()[0])

    def queue_files(self) -> list[str]:
        return sorted(p.name for p in (self.dir / "mqueue").iterdir() if p.name.startswith("qf"))

    def stop(self) -> None:
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return

        def gone() -> bool:
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                return True
        wait_for(gone, timeout=15, what=f"sendmail {self.name} to stop")
