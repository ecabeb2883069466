"""The config's value parsers: each takes a raw TOML value and returns the typed value,
or raises ValueError saying what was expected (config.py adds the file and key)."""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

def text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def int_min(lo: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer, got {type(v).__name__}")
        if v < lo:
            raise ValueError(f"must be at least {lo}, got {v}")
        return v
    return parse


def pos_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number, got {type(v).__name__}")
    if v <= 0:
        raise ValueError(f"must be greater than 0, got {v}")
    return float(v)


def str_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a list of strings")
    return tuple(v)


_LOG_LEVELS = ("debug", "info", "warning", "error")


def one_of(v: Any, choices: tuple[str, ...]) -> str:
    s = text(v)
    if s not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {v!r}")
    return s


def log_level(v: Any) -> str:
    s = text(v).lower()
    if s not in _LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(_LOG_LEVELS)}, got {v!r}")
    return s


def event_loop(v: Any) -> str:
    s = one_of(v, ("auto", "uvloop", "asyncio"))
    if s == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ValueError("uvloop is not installed (pip install uvloop, or \"auto\")")
    return s


_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def parse_domain(v: Any) -> str:
    s = text(v).strip().rstrip(".").lower()
    if not _DOMAIN_RE.match(s):
        raise ValueError(f"not a domain name: {v!r}")
    return s


def domain_list(v: Any) -> tuple[str, ...]:
    return tuple(parse_domain(x) for x in str_list(v))


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _port(s: str, whole: Any) -> int:
    if not s.isdigit() or not 0 < int(s) < 65536:
        raise ValueError(f"bad port in {whole!r}")
    return int(s)


def parse_hostport(v: Any, default_port: int | None = None) -> HostPort:
    """`HOST:PORT` or `[V6]:PORT` (or a bare HOST when default_port is given)."""
    s = text(v).strip()
    if default_port is not None and ":" in s and not s.startswith("["):
        try:                                   # a bare IPv6 address: "::1"
            return HostPort(str(ipaddress.IPv6Address(s)), default_port)
        except ValueError:
            pass
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", s)
    if not m:
        raise ValueError(f"expected HOST:PORT, got {v!r}")
    host = m.group(1) or m.group(3)
    port = m.group(2) or m.group(4)
    if port is None:
        if default_port is None:
            raise ValueError(f"expected HOST:PORT, got {v!r}")
        return HostPort(host, default_port)
    return HostPort(host, _port(port, v))


def hostport(v: Any) -> HostPort:
    return parse_hostport(v)


@dataclass(frozen=True)
class UnixPath:
    """A unix-domain socket, written `unix:/path` in the config."""
    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


def endpoint(v: Any) -> HostPort | UnixPath:
    """`HOST:PORT`, `[V6]:PORT` or `unix:/absolute/path`."""
    s = text(v).strip()
    if s.startswith("unix:"):
        path = s[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError(f"expected unix:/absolute/path, got {v!r}")
        return UnixPath(path)
    return parse_hostport(s)


def nameservers(v: Any) -> tuple[HostPort, ...]:
    out = []
    for item in str_list(v):
        hp = parse_hostport(item, default_port=53)
        try:
            ipaddress.ip_address(hp.host)
        except ValueError:
            raise ValueError(f"a nameserver must be an IP address, got {item!r}") from None
        out.append(hp)
    return tuple(out)


def parse_milter_socket(v: Any) -> str:
    """pymilter's form: `inet:PORT@HOST`, `inet6:PORT@HOST`, `unix:/path` (or `local:`)."""
    s = text(v).strip()
    m = re.fullmatch(r"(inet6?):(\d+)(?:@(.+))?", s)
    if m:
        _port(m.group(2), v)
        return s
    m = re.fullmatch(r"(unix|local):(/.+)", s)
    if m:
        return s
    raise ValueError(f"expected inet:PORT@HOST or unix:/path, got {v!r}")


def parse_base_url(v: Any) -> str:
    s = text(v).strip()
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"a base URL takes no query or fragment, got {v!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"bad port in {v!r}") from None
    return s.rstrip("/")


def submit_target(v: Any) -> HostPort | Path:
    """`[presence] submit`: `HOST:PORT` (SMTP) or `sendmail[:/path]` (the command)."""
    s = text(v).strip()
    if s == "sendmail" or s.startswith("sendmail:"):
        path = Path(s.partition(":")[2] or "/usr/sbin/sendmail")
        if not path.is_absolute():
            raise ValueError(f"sendmail:PATH needs an absolute path, got {v!r}")
        return path
    return parse_hostport(s)


@dataclass(frozen=True)
class ImapServer:
    """`[presence] imap`: where chat log-ins are checked (`imaps://` or `imap://`)."""
    host: str
    port: int
    tls: bool          # imaps: TLS from the start; imap: STARTTLS (plain on loopback)

    def __str__(self) -> str:
        return f"{'imaps' if self.tls else 'imap'}://{self.host}:{self.port}"


def imap_server(v: Any) -> ImapServer | None:
    s = text(v).strip()
    if not s:
        return None
    u = urlsplit(s)
    try:
        port = u.port
    except ValueError:
        raise ValueError(f"bad port in {v!r}") from None
    if u.scheme not in ("imap", "imaps") or not u.hostname or u.path not in ("", "/") \
            or u.username or u.query:
        raise ValueError(f"expected imaps://HOST[:PORT] or imap://HOST[:PORT], got {v!r}")
    tls = u.scheme == "imaps"
    return ImapServer(u.hostname, port or (993 if tls else 143), tls)


def optional_endpoint(v: Any) -> HostPort | UnixPath | None:
    return endpoint(v) if text(v).strip() else None


def email_address(v: Any) -> str:
    s = text(v).strip()
    local, at, domain = s.rpartition("@")
    if not at or not local or any(c in s for c in " <>\r\n\t,;\"") or not domain:
        raise ValueError(f"expected an address like mailtalk@example.org, got {v!r}")
    parse_domain(domain)
    return s


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def optional_path(v: Any) -> Path | None:
    """A file path, or "" for none."""
    return path_value(v) if text(v) else None


def path_value(v: Any) -> Path:
    s = text(v)
    if not s:
        raise ValueError("expected a file path, got an empty string")
    return Path(s).expanduser()


def database(v: Any) -> str:
    s = text(v).strip()
    if not s:
        raise ValueError("expected a file path or a database URL")
    if "://" in s and not s.startswith(("sqlite://", "postgresql://", "postgres://")):
        raise ValueError(f"expected a file path, sqlite:///path or postgresql://..., got {v!r}")
    if s.startswith(("postgresql://", "postgres://")):
        u = urlsplit(s)
        socket_dir = next((q[5:] for q in u.query.split("&") if q.startswith("host=/")), "")
        local = socket_dir or not u.hostname or is_loopback_host(u.hostname)
        if not local and not u.password:
            raise ValueError("a PostgreSQL server off this host needs a password in the URL "
                             "(postgresql://user:password@host/db)")
    return s


def redis_url(v: Any) -> str:
    """`[presence] redis`: "", `redis://[:password@]host[:port][/db]`, `rediss://...`
    or `unix:/path/to/redis.sock`; a password off this host."""
    s = text(v).strip()
    if not s:
        return ""
    if s.startswith("unix:"):
        if not s[len("unix:"):].startswith("/"):
            raise ValueError(f"expected unix:/absolute/path, got {v!r}")
        return s
    u = urlsplit(s)
    if u.scheme not in ("redis", "rediss") or not u.hostname:
        raise ValueError(f"expected redis://host[:port], rediss://... or unix:/path, got {v!r}")
    if not u.password and not is_loopback_host(u.hostname):
        raise ValueError("a Redis server off this host needs a password in the URL "
                         "(redis://:password@host:6379)")
    return s


def redacted(url: str) -> str:
    """A database URL fit for a log line: the password replaced by ***."""
    u = urlsplit(url)
    if not u.password:
        return url
    netloc = u.netloc.replace(f":{u.password}@", ":***@", 1)
    return u._replace(netloc=netloc).geturl()


def networks(v: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A list of IP addresses or CIDR networks."""
    out = []
    for item in str_list(v):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"expected IP addresses or networks, got {item!r}") from None
    return tuple(out)


def is_loopback_host(host: str) -> bool:
    h = host.strip("[]").lower().rstrip(".")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


STATIC_SELF = "self"     # [dns] static: the record `mailtalk dns` prints for this site


def static_records(v: Any) -> tuple[tuple[str, str], ...]:
    """`[dns] static`: {domain = "v=mailtalk1; api=...", or "self"}, answered without
    DNS. For trials and tests on one host: a record's api must be a loopback address."""
    from mailtalk.discovery import BadRecord, parse_record   # it imports this module
    if not isinstance(v, dict):
        raise ValueError('expected a table of domain = "record", e.g. { localhost = "self" }')
    out = []
    for name, record in v.items():
        domain = parse_domain(name)
        if not isinstance(record, str):
            raise ValueError(f"{name}: expected a record string or \"{STATIC_SELF}\"")
        if record != STATIC_SELF:
            try:
                api_host = parse_record(record).host
            except BadRecord as e:
                raise ValueError(f"{name}: {e}") from None
            if not is_loopback_host(api_host):
                raise ValueError(f"{name}: a static record's api must be a loopback "
                                 f"address; a real site publishes its record in DNS")
        out.append((domain, record))
    return tuple(out)
