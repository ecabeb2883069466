"""A private OpenDKIM for tests (Debian's opendkim and opendkim-tools), never the
system service: `opendkim -f -x DIR/opendkim.conf` as our child, a milter on a
loopback port.

- `OpenDkim.signer(base, address, domain, selector)`: signs mail of `domain` with a
  new key (opendkim-genkey) and the signed-field lines of deploy/dkim/opendkim.conf
  (our two fields included); `key_record` is its `<selector>._domainkey` TXT value.
- `OpenDkim.verifier(base, address, authserv_id, keys)`: verifies and writes
  Authentication-Results with that authserv-id, the signer's public key given to it
  (`verifier`'s docstring says why not through DNS).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .wait import free_port, port_open, wait_for

OPENDKIM = "/usr/sbin/opendkim"
GENKEY = "/usr/sbin/opendkim-genkey"
SAFE_ROOT = "/run"
DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "dkim" / "opendkim.conf"


def unavailable() -> str | None:
    if not Path(OPENDKIM).exists() or not Path(GENKEY).exists():
        return "OpenDKIM (opendkim, opendkim-tools) is not installed (scripts/setup --test)"
    return None


def deploy_lines() -> str:
    """The setting lines of deploy/dkim/opendkim.conf, as a site adds them."""
    return "".join(line + "\n" for line in DEPLOY_CONF.read_text().splitlines()
                   if line.strip() and not line.startswith("#"))


class OpenDkim:
    def __init__(self, base: Path, name: str, address: str, settings: str) -> None:
        # OpenDKIM refuses a config or key file on a path others may write to (/tmp):
        # its files live under /run, in a directory of root's alone.
        self.dir = Path(tempfile.mkdtemp(prefix=f"mt-opendkim-{name}-", dir=SAFE_ROOT))
        self.base_link = Path(base, f"opendkim-{name}")      # for a person looking
        self.base_link.symlink_to(self.dir)
        self.address = address
        self.port = free_port(address)
        self.conf = self.dir / "opendkim.conf"
        self.conf.write_text(
            f"Socket inet:{self.port}@{address}\nPidFile {self.dir / 'opendkim.pid'}\n"
            "Syslog no\nUMask 007\nCanonicalization relaxed/relaxed\n" + settings)
        self._proc: subprocess.Popen[bytes] | None = None
        self.key_record = ""
        self._keys: list[Path] = []
        self.key_file: Path | None = None       # a signer's private key

    @property
    def milter(self) -> str:
        """The milter address in Postfix's form."""
        return f"inet:{self.address}:{self.port}"

    @classmethod
    def signer(cls, base: Path, address: str, domain: str, selector: str) -> "OpenDkim":
        keys = Path(tempfile.mkdtemp(prefix=f"mt-dkim-keys-{domain}-", dir=SAFE_ROOT))
        subprocess.run([GENKEY, "-b", "2048", "-d", domain, "-s", selector, "-D", str(keys)],
                       check=True, capture_output=True)
        inst = cls(base, f"sign-{domain}", address,
                   f"Mode s\nDomain {domain}\nSelector {selector}\n"
                   f"KeyFile {keys / (selector + '.private')}\n" + deploy_lines())
        inst._keys.append(keys)
        inst.key_file = keys / f"{selector}.private"
        txt = (keys / f"{selector}.txt").read_text()
        inst.key_record = "".join(re.findall(r'"([^"]*)"', txt))
        return inst

    @classmethod
    def verifier(cls, base: Path, address: str, authserv_id: str,
                 keys: dict[str, str]) -> "OpenDkim":
        """`keys`: `<selector>._domainkey.<domain>` -> its TXT value. Debian's OpenDKIM
        resolves with libunbound, which did not ask a loopback dnsmasq here whatever
        its settings; OpenDKIM's own TestPublicKeys file stands in for that one DNS
        lookup (mailtalk's own DNS lookups are tested against dnsmasq elsewhere)."""
        inst = cls(base, f"verify-{authserv_id}", address, f"Mode v\nAuthservID {authserv_id}\n")
        table = inst.dir / "test-public-keys"
        table.write_text("".join(f"{name} {value}\n" for name, value in keys.items()))
        with open(inst.conf, "a") as f:
            f.write(f"TestPublicKeys {table}\n")
        return inst

    def start(self, timeout: float = 20.0) -> "OpenDkim":
        with open(self.dir / "opendkim.out", "ab") as out:
            self._proc = subprocess.Popen([OPENDKIM, "-f", "-x", str(self.conf)],
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        wait_for(lambda: self._proc is not None and self._proc.poll() is None
                 and port_open(self.address, self.port), timeout=timeout,
                 what=f"OpenDKIM on {self.address}:{self.port}: {self.output()}")
        return self

    def output(self) -> str:
        try:
            return (self.dir / "opendkim.out").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for d in (self.dir, *self._keys):
            shutil.rmtree(d, ignore_errors=True)

