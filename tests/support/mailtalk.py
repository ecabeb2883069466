"""Runs the real `mailtalk` command in tests: a TOML config in a tmp dir, the
service as a subprocess logging to a file, started when its ports answer, and
stopped with SIGTERM (it must exit by itself, with status 0, within a deadline).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from .wait import port_open, wait_for

log = logging.getLogger("tests.mailtalk")

# The venv's console script; fall back to `python -m mailtalk` of this interpreter.
_VENV_BIN = Path(sys.executable).parent
MAILTALK = str(_VENV_BIN / "mailtalk") if (_VENV_BIN / "mailtalk").exists() else None

# Defaults the service uses when a section leaves its address out (mirrors
# mailtalk.defaults; tests should always give their own addresses).
_DEFAULT_LISTEN = {"milter": "inet:8894@127.0.0.1", "filter": "127.0.0.1:10025",
                   "presence": "127.0.0.1:8470"}
_SERVICES = ("milter", "filter", "presence")


def mailtalk_argv(config_path: str | os.PathLike[str], *args: str,
                  program: str | None = None) -> list[str]:
    """`program`: another `mailtalk` executable (e.g. one installed from the wheel)."""
    base = [program or MAILTALK] if program or MAILTALK else [sys.executable, "-m", "mailtalk"]
    return [*base, "-c", str(config_path), *args]


def to_toml(config: Mapping[str, Mapping[str, Any]]) -> str:
    """A TOML document from {section: {key: value}} (str, int, float, bool, lists,
    mappings as inline tables)."""
    lines: list[str] = []
    for section, table in config.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, os.PathLike)):
        s = str(v)
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_toml_value(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def endpoints(config: Mapping[str, Mapping[str, Any]], subcommand: str) -> list[str]:
    """What a service started with this config listens on: `HOST:PORT` or a unix
    socket path, for each service that the subcommand starts."""
    names = [s for s in _SERVICES if s in config] if subcommand == "run" else [subcommand]
    out = []
    for name in names:
        if name not in _DEFAULT_LISTEN:
            continue
        section = config.get(name, {})
        value = str(section.get("socket" if name == "milter" else "listen",
                                _DEFAULT_LISTEN[name]))
        if name == "milter":
            m = re.fullmatch(r"inet6?:(\d+)(?:@(.+))?", value)
            if m:
                out.append(f"{m.group(2) or '127.0.0.1'}:{m.group(1)}")
            else:
                out.append(value.split(":", 1)[1])     # unix:/path or local:/path
        else:
            out.append(value)
    return out


def endpoint_answers(endpoint: str) -> bool:
    if endpoint.startswith("/"):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect(endpoint)
            return True
        except OSError:
            return False
    host, _, port = endpoint.rpartition(":")
    return port_open(host.strip("[]"), int(port))


class MailtalkService:
    """One `mailtalk -c CONFIG SUBCOMMAND` process.

    `config` is {section: {key: value}} or TOML text. Unless the config names
    one, `[site] state_dir` is set to a directory under `workdir`, so a test
    never touches /var/lib/mailtalk.
    """

    def __init__(self, workdir: str | os.PathLike[str],
                 config: Mapping[str, Mapping[str, Any]] | str,
                 subcommand: str = "run", name: str = "mailtalk",
                 env: Mapping[str, str] | None = None,
                 wait_endpoints: list[str] | None = None,
                 program: str | None = None) -> None:
        self.dir = Path(workdir, name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.program = program
        self.subcommand = subcommand
        self.config_path = self.dir / "mailtalk.toml"
        self.log_path = self.dir / "mailtalk.log"
        self.state_dir = self.dir / "state"
        if isinstance(config, str):
            text = config
            self.endpoints = wait_endpoints if wait_endpoints is not None else []
        else:
            cfg = {k: dict(v) for k, v in config.items()}
            cfg.setdefault("site", {}).setdefault("state_dir", str(self.state_dir))
            text = to_toml(cfg)
            self.endpoints = (wait_endpoints if wait_endpoints is not None
                              else endpoints(cfg, subcommand))
        self.config_path.write_text(text)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def start(self, timeout: float = 20.0) -> "MailtalkService":
        """Start the process; wait until every endpoint answers (or it dies)."""
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                mailtalk_argv(self.config_path, self.subcommand, program=self.program), stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"mailtalk {self.subcommand} exited with "
                                     f"{self.proc.returncode}; its log:")
            return all(endpoint_answers(e) for e in self.endpoints)
        try:
            wait_for(up, timeout=timeout,
                     what=f"mailtalk {self.subcommand} on {', '.join(self.endpoints)}")
        except AssertionError as e:
            self.kill()
            raise AssertionError(f"{e}\n{self.log_tail()}") from None
        log.info("mailtalk %s (%s) up on %s", self.subcommand, self.name, self.endpoints)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait; AssertionError if it did not exit by itself in time
        or exited with a status other than 0. Returns the exit status."""
        if self.proc is None:
            return self.returncode or 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"mailtalk {self.subcommand} did not stop within "
                                     f"{timeout:g} s of SIGTERM:\n{self.log_tail()}")
        self.returncode = proc.returncode
        if proc.returncode != 0:
            raise AssertionError(f"mailtalk {self.subcommand} exited with {proc.returncode}"
                                 f":\n{self.log_tail()}")
        return proc.returncode

    def kill(self) -> None:
        """Stop without any check (for teardown after a failure)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until the service's log matches the regular expression `pattern`."""
        rx = re.compile(pattern)
        return wait_for(lambda: rx.search(self.log()), timeout=timeout,
                        what=f"/{pattern}/ in the log of mailtalk {self.subcommand}")

    def command(self, *args: str, input: str | None = None,
                timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run another subcommand with the same config, e.g.
        `command("user", "add", "alice@a.test", "--password-stdin", input="pw")`."""
        return run_mailtalk(self.config_path, *args, input=input, timeout=timeout,
                            env=self.env, program=self.program)

    def __enter__(self) -> "MailtalkService":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_mailtalk(config_path: str | os.PathLike[str], *args: str, input: str | None = None,
                 timeout: float = 60.0, env: Mapping[str, str] | None = None,
                 program: str | None = None) -> subprocess.CompletedProcess[str]:
    """`mailtalk -c CONFIG ARGS...` to completion (stdout and stderr captured)."""
    return subprocess.run(mailtalk_argv(config_path, *args, program=program), input=input,
                          text=True,
                          capture_output=True, timeout=timeout,
                          env=dict(env) if env is not None else None)
