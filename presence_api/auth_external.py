"""One password for mail and chat: the chat's log-in asks the site's own mail server.

`[presence] auth = "imap"`: LOGIN on the site's IMAP server (`imaps://`, or
`imap://` with STARTTLS; certificates are verified, except on a loopback address,
where `imap://` may also stay plain). The standard library's imaplib in a worker
thread: one short exchange per log-in needs no async IMAP client.

`[presence] auth = "dovecot"`: Dovecot's auth-client protocol on its auth socket
(`unix:/run/dovecot/auth-client`, or HOST:PORT of an inet listener), written here
from its documented line format (no maintained Python client exists):

    C: VERSION	1	2            C: CPID	<pid>
    S: VERSION	1	2  MECH ...  SPID ...  CUID ...  COOKIE ...  DONE
    C: AUTH	1	PLAIN	service=mailtalk	secured	resp=<base64 of "\\0user\\0password">
    S: OK	1	user=...         or   FAIL	1	[temp]	...

`check` answers True (the password is right), False (it is not), or raises
`Unavailable` (the server could not be asked, or failed for a reason of its own):
then the log-in page says "try again later" and nothing counts as a failed log-in.
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import logging
import os
import ssl
from typing import Protocol

from mailtalk.config_values import HostPort, ImapServer, UnixPath, is_loopback_host

log = logging.getLogger("mailtalk.presence.auth")

TIMEOUT = 10.0                 # seconds for one check, connect included
LINE_MAX = 8192                # a line of Dovecot's auth protocol


class Unavailable(Exception):
    """The password could not be checked now; str() says why (for the log)."""


class PasswordCheck(Protocol):
    async def check(self, account: str, password: str) -> bool: ...


class ImapCheck:
    def __init__(self, server: ImapServer) -> None:
        self.server = server
        self._loopback = is_loopback_host(server.host)

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self._loopback:            # a test or a local server with its own cert
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _login(self, account: str, password: str) -> bool:
        s = self.server
        try:
            if s.tls:
                imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(s.host, s.port, ssl_context=self._context(),
                                                        timeout=TIMEOUT)
            else:
                imap = imaplib.IMAP4(s.host, s.port, timeout=TIMEOUT)
                if "STARTTLS" in imap.capabilities:
                    imap.starttls(self._context())
                elif not self._loopback:
                    imap.shutdown()
                    raise Unavailable(f"{s} offers no STARTTLS: passwords would go in clear")
        except (OSError, imaplib.IMAP4.error, ssl.SSLError) as e:
            raise Unavailable(f"{s}: {e}") from None
        try:
            imap.login(account, password)
        except imaplib.IMAP4.abort as e:
            raise Unavailable(f"{s}: {e}") from None
        except imaplib.IMAP4.error as e:
            if "[UNAVAILABLE]" in str(e) or "[SERVERBUG]" in str(e):
                raise Unavailable(f"{s}: {e}") from None
            return False
        except OSError as e:
            raise Unavailable(f"{s}: {e}") from None
        try:
            imap.logout()
        except (OSError, imaplib.IMAP4.error):
            pass
        return True

    async def check(self, account: str, password: str) -> bool:
        return await asyncio.to_thread(self._login, account, password)


class DovecotCheck:
    def __init__(self, socket: HostPort | UnixPath) -> None:
        self.socket = socket

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.socket, UnixPath):
            return await asyncio.open_unix_connection(self.socket.path, limit=LINE_MAX)
        return await asyncio.open_connection(self.socket.host, self.socket.port, limit=LINE_MAX)

    async def check(self, account: str, password: str) -> bool:
        try:
            return await asyncio.wait_for(self._check(account, password), TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            raise Unavailable(f"Dovecot auth at {self.socket}: {type(e).__name__}: {e}") from None

    async def _check(self, account: str, password: str) -> bool:
        if any(c in account + password for c in "\0\t\n"):
            return False                          # cannot be sent, cannot be right
        reader, writer = await self._open()
        try:
            writer.write(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n".encode())
            mechs: set[str] = set()
            while (line := (await reader.readuntil(b"\n")).decode().rstrip("\n")) != "DONE":
                fields = line.split("\t")
                if fields[0] == "VERSION" and fields[1:2] != ["1"]:
                    raise ValueError(f"auth protocol version {fields[1:3]}")
                if fields[0] == "MECH":
                    mechs.add(fields[1].upper())
            if "PLAIN" not in mechs:
                raise ValueError("the PLAIN mechanism is not offered (auth_mechanisms)")
            resp = base64.b64encode(f"\0{account}\0{password}".encode()).decode()
            writer.write(f"AUTH\t1\tPLAIN\tservice=mailtalk\tsecured\tresp={resp}\n".encode())
            await writer.drain()
            while True:
                fields = (await reader.readuntil(b"\n")).decode().rstrip("\n").split("\t")
                if fields[:2] == ["OK", "1"]:
                    return True
                if fields[:2] == ["FAIL", "1"]:
                    if "temp" in fields[2:]:
                        raise ValueError(f"temporary failure: {' '.join(fields[2:])}")
                    return False
                if fields[:2] == ["CONT", "1"]:
                    raise ValueError("the server asked for another step")
        finally:
            writer.close()


def make_check(auth: str, imap: ImapServer | None,
               dovecot: HostPort | UnixPath | None) -> PasswordCheck | None:
    """The checker `[presence] auth` names; None for local passwords."""
    if auth == "imap" and imap is not None:
        return ImapCheck(imap)
    if auth == "dovecot" and dovecot is not None:
        return DovecotCheck(dovecot)
    return None
