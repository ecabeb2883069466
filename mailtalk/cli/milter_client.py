"""The MTA's side of the milter protocol (version 6), enough to pass one message
through a milter as Postfix would and apply the header and body changes it asks for.

`mailtalk trial` uses it to put a mail through the running sending milter without an
MTA. Written by hand: no maintained Python library speaks the MTA's side (pymilter
is the milter's side). Each packet is a 4-byte length, a command byte and its data;
the milter answers every command except those its negotiated flags say it skips or
leaves unanswered.
"""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass, field

VERSION = 6
ACTIONS = 0x1FF                 # every change a milter may ask for
PROTOCOL = 0x0FFFFF             # every step may be skipped or left unanswered;
                                # no SMFIP_HDR_LEADSPC (values go without the space)
# command -> (flag: the milter skips it, flag: the milter does not answer it)
_STEPS = {b"C": (0x1, 0x1000), b"H": (0x2, 0x2000), b"M": (0x4, 0x4000),
          b"R": (0x8, 0x8000), b"T": (0x200, 0x10000), b"L": (0x20, 0x80),
          b"N": (0x40, 0x40000), b"B": (0x10, 0x80000)}
_FINAL = {b"c": "continue", b"a": "accept", b"r": "reject", b"t": "tempfail",
          b"d": "discard", b"y": "reply", b"s": "skip"}
BODY_CHUNK = 65535


class MilterError(Exception):
    """The milter cannot be reached or broke the protocol; str() says which."""


@dataclass
class Result:
    """The message as the milter left it, and its verdict."""
    headers: list[tuple[str, str]]
    body: bytes
    verdict: str                                 # "continue", "accept", "reject", ...
    added: list[tuple[str, str]] = field(default_factory=list)


def connect(spec: str, timeout: float) -> socket.socket:
    """A socket to `inet:PORT@HOST`, `inet6:PORT@HOST` or `unix:/path` (`local:`)."""
    m = re.fullmatch(r"(inet6?):(\d+)(?:@(.+))?", spec)
    try:
        if m:
            return socket.create_connection((m.group(3) or "127.0.0.1", int(m.group(2))),
                                            timeout=timeout)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(spec.split(":", 1)[1])
        return s
    except OSError as e:
        raise MilterError(f"cannot connect to the milter at {spec}: {e.strerror or e}") from None


class MilterClient:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._protocol = 0

    def close(self) -> None:
        try:
            self._send(b"Q")
        except OSError:
            pass
        self._sock.close()

    def _send(self, cmd: bytes, data: bytes = b"") -> None:
        self._sock.sendall(struct.pack(">I", len(data) + 1) + cmd + data)

    def _read(self) -> tuple[bytes, bytes]:
        head = self._exactly(4)
        size = struct.unpack(">I", head)[0]
        if not 1 <= size <= 1 << 24:
            raise MilterError(f"the milter sent a packet of {size} bytes")
        packet = self._exactly(size)
        return packet[:1], packet[1:]

    def _exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self._sock.recv(n - len(buf))
            except OSError as e:
                raise MilterError(f"reading from the milter: {e}") from None
            if not chunk:
                raise MilterError("the milter closed the connection")
            buf += chunk
        return buf

    def negotiate(self) -> None:
        self._send(b"O", struct.pack(">III", VERSION, ACTIONS, PROTOCOL))
        cmd, data = self._read()
        if cmd != b"O" or len(data) < 12:
            raise MilterError(f"the milter answered option negotiation with {cmd!r}")
        _version, _actions, self._protocol = struct.unpack(">III", data[:12])

    def macros(self, stage: bytes, values: dict[str, str]) -> None:
        self._send(b"D", stage + b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                                          for k, v in values.items()))

    def step(self, cmd: bytes, data: bytes = b"") -> str:
        """Send one step; its verdict ("continue" when skipped or not answered)."""
        skip, no_reply = _STEPS[cmd]
        if self._protocol & skip:
            return "continue"
        self._send(cmd, data)
        if self._protocol & no_reply:
            return "continue"
        while True:
            reply, _ = self._read()
            if reply != b"p":                   # progress: keep waiting
                return _FINAL.get(reply, f"unexpected {reply!r}")

    def end(self, headers: list[tuple[str, str]], body: bytes) -> Result:
        """End of message: apply the milter's changes until its verdict."""
        result = Result(list(headers), body, "continue")
        new_body: bytes | None = None
        self._send(b"E")
        while True:
            reply, data = self._read()
            if reply in (b"h", b"i", b"m"):
                index = 0
                if reply != b"h":
                    index, data = struct.unpack(">I", data[:4])[0], data[4:]
                name, value = (p.decode("utf-8", "replace") for p in data.split(b"\0")[:2])
                _change(result, reply, index, name, value)
            elif reply == b"b":
                new_body = (new_body or b"") + data
            elif reply in _FINAL:
                result.verdict = _FINAL[reply]
                break
            elif reply != b"p":
                pass                              # envelope changes: not ours to show
        if new_body is not None:
            result.body = new_body
        return result


def _change(result: Result, kind: bytes, index: int, name: str, value: str) -> None:
    if kind == b"h":
        result.headers.append((name, value))
        result.added.append((name, value))
    elif kind == b"i":
        result.headers.insert(index, (name, value))
        result.added.append((name, value))
    else:                          # "m": the index-th header of that name (1-based)
        seen = 0
        for i, (n, _) in enumerate(result.headers):
            if n.lower() == name.lower():
                seen += 1
                if seen == index:
                    if value:
                        result.headers[i] = (n, value)
                    else:
                        del result.headers[i]
                    return


def pass_through(spec: str, *, sender: str, recipients: list[str], login: str,
                 headers: list[tuple[str, str]], body: bytes, queue_id: str,
                 timeout: float = 10.0) -> Result:
    """One message through the milter at `spec`, from a client that logged in (SASL)
    as `login`, the steps and macros Postfix sends."""
    c = MilterClient(connect(spec, timeout))
    try:
        c.negotiate()
        c.macros(b"C", {"j": "localhost", "_": "localhost [127.0.0.1]"})
        steps = [(b"C", b"localhost\0" + b"4" + struct.pack(">H", 25) + b"127.0.0.1\0"),
                 (b"H", b"localhost\0")]
        for cmd, data in steps:
            if (v := c.step(cmd, data)) != "continue":
                return Result(headers, body, v)
        c.macros(b"M", {"i": queue_id, "{auth_type}": "PLAIN", "{auth_authen}": login,
                        "{mail_addr}": sender})
        if (v := c.step(b"M", f"<{sender}>\0".encode())) != "continue":
            return Result(headers, body, v)
        for rcpt in recipients:
            c.macros(b"R", {"{rcpt_addr}": rcpt})
            if (v := c.step(b"R", f"<{rcpt}>\0".encode())) != "continue":
                return Result(headers, body, v)
        c.step(b"T")
        for name, value in headers:
            c.step(b"L", name.encode() + b"\0" + value.encode() + b"\0")
        c.step(b"N")
        for start in range(0, len(body), BODY_CHUNK):
            if c.step(b"B", body[start:start + BODY_CHUNK]) == "skip":
                break
        c.macros(b"E", {"i": queue_id})
        return c.end(headers, body)
    except OSError as e:
        raise MilterError(f"talking to the milter at {spec}: {e}") from None
    finally:
        c.close()
