"""A private ejabberd (Debian's package) for the benchmarks: start, fill, stop.

Debian's ejabberd is installed by `bench/setup` without starting its system service.
This runs an instance of its own as a foreground process, from the templates in
`bench/ejabberd/`, with config, Mnesia spool and logs in a temporary directory:

    ejabberdctl --config-dir D --config D/ejabberd.yml --ctl-config D/ejabberdctl.cfg \
                --logs D/logs --spool D/spool foreground

ejabberdctl wants to run as the `ejabberd` user; run as root it would switch with
su, whose PAM session resets the open-file limit to 1024 and caps ejabberd at about
a thousand connections. So ejabberdctl itself is started as `ejabberd` (HOME its
home, for the Erlang cookie) and inherits our raised limit; the directory is
chowned to it. `ERL_DIST_PORT` in the ctl config keeps epmd out of the picture.
Stopping: `ejabberdctl ... stop`, then SIGKILL to the process group we started if it
has not gone within the deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from pbench_util import find_pid, free_port, wait_for

log = logging.getLogger("bench.ejabberd")

TEMPLATES = Path(__file__).resolve().parent / "ejabberd"
EJABBERDCTL = "/usr/sbin/ejabberdctl"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


class EjabberdPeer:
    """One private ejabberd node on `ip` (HTTP API and plain c2s), for one XMPP host."""

    def __init__(self, ip: str, host: str) -> None:
        if not os.path.exists(EJABBERDCTL):
            raise RuntimeError("ejabberd is not installed: run bench/setup (as root)")
        self.ip = ip
        self.host = host
        self.http_port = free_port(ip)
        self.c2s_port = free_port(ip)
        self.dist_port = free_port("127.0.0.1")
        self.node = f"mtbench{self.dist_port}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix="mailtalk-ejabberd-"))
        self.proc: asyncio.subprocess.Process | None = None
        self.pid: int | None = None       # the beam.smp process, for RSS and CPU figures

    @property
    def api_url(self) -> str:
        return f"http://{self.ip}:{self.http_port}/api"

    def _ctl(self, *args: str) -> list[str]:
        d = str(self.dir)
        return [EJABBERDCTL, "--config-dir", d, "--config", f"{d}/ejabberd.yml",
                "--ctl-config", f"{d}/ejabberdctl.cfg", "--logs", f"{d}/logs",
                "--spool", f"{d}/spool", *args]

    def _as_ejabberd(self) -> dict[str, Any]:
        """subprocess arguments that run a child as the ejabberd user (we are root)."""
        ej = pwd.getpwnam("ejabberd")
        env = dict(os.environ, HOME=ej.pw_dir, USER="ejabberd", LOGNAME="ejabberd")
        return {"user": ej.pw_uid, "group": ej.pw_gid, "extra_groups": [], "env": env,
                "cwd": str(self.dir)}

    def _write_config(self) -> None:
        fields = {"@HOST@": self.host, "@IP@": self.ip, "@HTTP_PORT@": str(self.http_port),
                  "@C2S_PORT@": str(self.c2s_port), "@NODE@": self.node,
                  "@DIST_PORT@": str(self.dist_port)}
        for name in ("ejabberd.yml", "ejabberdctl.cfg"):
            text = (TEMPLATES / f"{name}.in").read_text()
            for k, v in fields.items():
                text = text.replace(k, v)
            (self.dir / name).write_text(text)
        shutil.copy("/etc/ejabberd/inetrc", self.dir / "inetrc")
        (self.dir / "spool").mkdir()
        (self.dir / "logs").mkdir()
        os.chmod(self.dir, 0o755)        # mkdtemp's 0700 would lock the ejabberd user out
        ej = pwd.getpwnam("ejabberd")
        for p in [self.dir, *self.dir.rglob("*")]:
            os.chown(p, ej.pw_uid, ej.pw_gid)

    async def start(self) -> None:
        self._write_config()
        self.proc = await asyncio.create_subprocess_exec(
            *self._ctl("foreground"), stdin=asyncio.subprocess.DEVNULL,
            stdout=open(self.dir / "logs" / "foreground.out", "wb"),
            stderr=asyncio.subprocess.STDOUT, start_new_session=True, **self._as_ejabberd())
        async with aiohttp.ClientSession() as http:
            async def ready() -> bool:
                if self.proc is not None and self.proc.returncode is not None:
                    raise RuntimeError(f"ejabberd exited early; see {self.dir}/logs")
                async with http.post(f"{self.api_url}/status", json={},
                                     timeout=aiohttp.ClientTimeout(total=2)) as r:
                    return r.status == 200
            await wait_for(ready, START_TIMEOUT, "ejabberd HTTP API")
        self.pid = find_pid(self.node, "beam")
        log.info("ejabberd %s ready: API %s, c2s %s:%d, beam pid %s",
                 self.node, self.api_url, self.ip, self.c2s_port, self.pid)

    async def register(self, http: aiohttp.ClientSession, users: list[str],
                       password: str, concurrency: int = 16) -> None:
        """Register local users through the HTTP API (`register` command)."""
        sem = asyncio.Semaphore(concurrency)

        async def one(user: str) -> None:
            async with sem:
                async with http.post(f"{self.api_url}/register", json={
                        "user": user, "host": self.host, "password": password}) as r:
                    if r.status != 200:
                        raise RuntimeError(f"ejabberd register {user}: {r.status} "
                                           f"{await r.text()}")
        await asyncio.gather(*(one(u) for u in users))

    def _kill(self) -> None:
        """SIGKILL the group we started and, should su have left it, the beam process."""
        assert self.proc is not None
        targets = [(os.killpg, self.proc.pid)] + ([(os.kill, self.pid)] if self.pid else [])
        for kill, pid in targets:
            try:
                kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            stopper = await asyncio.create_subprocess_exec(
                *self._ctl("stop"), stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, **self._as_ejabberd())
            try:
                await asyncio.wait_for(stopper.wait(), STOP_TIMEOUT)
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("ejabberd did not stop in %.0f s: killing its process group",
                            STOP_TIMEOUT)
                self._kill()
                await self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.proc = None
