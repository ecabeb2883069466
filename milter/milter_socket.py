"""libmilter's listening socket: what we do to it between opening and serving.

inet: TCP_NODELAY. At end-of-message libmilter sends each reply (two header
additions, then continue) as its own small write. With Nagle's algorithm on, the
second write waits for the ACK of the first, and the MTA, which answers nothing to
a header addition, delays that ACK (Linux: up to 40 ms): tens of milliseconds per
message over loopback TCP. libmilter never sets TCP_NODELAY and pymilter does not
expose the connection's descriptor, but Linux copies TCP_NODELAY from a listening
socket to every socket accept() returns; so we set it once, on the listener, found
among our descriptors as the listening socket that opensocket() added on our port.
The writes are whole milter packets, so nothing is lost by sending them at once.

unix: a mode the MTA can reach. libmilter creates the socket with the process
umask; we give it mode 0660 and the group `[milter] socket_group` (Postfix's smtpd
runs as user postfix), or 0666 when that key is empty.
"""

from __future__ import annotations

import grp
import logging
import os
import re
import socket
import stat
from pathlib import Path

log = logging.getLogger("mailtalk.milter")

UNIX_SOCKET_MODE = 0o660
UNIX_SOCKET_MODE_ANY = 0o666
UNIX_DIR_MODE = 0o755          # the MTA's user must be able to enter the directory


def _unix_path(spec: str) -> Path | None:
    m = re.fullmatch(r"(?:unix|local):(/.+)", spec)
    return Path(m.group(1)) if m else None


def _inet_port(spec: str) -> int | None:
    m = re.fullmatch(r"inet6?:(\d+)(?:@.*)?", spec)
    return int(m.group(1)) if m else None


_owner: str | None = None


def claim(owner: str) -> None:
    """libmilter serves one milter per process (one smfi_register, one socket, global
    callbacks). The second part of one process that wants it gets a clear error."""
    global _owner
    if _owner is not None and _owner != owner:
        raise RuntimeError(f"libmilter already serves {_owner} in this process; run "
                           f"{owner} as a process of its own")
    _owner = owner


def prepare(spec: str) -> None:
    """Create the directory of a unix socket if it is missing."""
    path = _unix_path(spec)
    if path is not None and not path.parent.is_dir():
        path.parent.mkdir(mode=UNIX_DIR_MODE, parents=True)


def _fds() -> list[int]:
    try:
        return [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:                        # no /proc: try the low descriptors
        return list(range(3, 1024))


def listening_fds() -> set[int]:
    """Descriptors of this process that are listening TCP sockets."""
    out = set()
    for fd in _fds():
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with s:
            try:
                if (s.family in (socket.AF_INET, socket.AF_INET6)
                        and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
                    out.add(fd)
            except OSError:
                pass
    return out


def set_nodelay(fd: int) -> None:
    # The dup shares the socket: the option lands on libmilter's listener.
    with socket.socket(fileno=os.dup(fd)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def tune(spec: str, before: set[int], group: str) -> None:
    """After opensocket(): TCP_NODELAY on an inet listener, access on a unix one."""
    port = _inet_port(spec)
    if port is not None:
        found = 0
        for fd in listening_fds() - before:
            with socket.socket(fileno=os.dup(fd)) as s:
                if s.getsockname()[1] != port:
                    continue
            set_nodelay(fd)
            found += 1
        if not found:
            log.warning("%s: listening socket not found; TCP_NODELAY not set "
                        "(expect slower mail over inet:)", spec)
        return
    path = _unix_path(spec)
    if path is None:
        return
    if not group:
        os.chmod(path, UNIX_SOCKET_MODE_ANY)
        return
    try:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    except (KeyError, OSError) as e:
        log.warning("%s: cannot give the socket to group %r (%s); the MTA may not "
                    "reach it", spec, group, e)
    os.chmod(path, UNIX_SOCKET_MODE)


def poke(spec: str) -> None:
    """Connect to the milter socket and hang up (wakes libmilter's listener)."""
    port = _inet_port(spec)
    path = _unix_path(spec)
    try:
        if port is not None:
            host = spec.partition("@")[2] or "127.0.0.1"
            with socket.create_connection((host, port), timeout=1.0):
                pass
        elif path is not None:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1.0)
                s.connect(str(path))
    except OSError:
        pass                               # nothing listening: nothing to wake
