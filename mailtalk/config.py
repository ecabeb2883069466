"""The one configuration loader: TOML in, checked and typed dataclasses out.

Every key is declared once below with its parser and default (the defaults live in
`defaults.py`). An unknown section or key, a wrong type or a bad value stops start-up
with one line naming the file and the key: `ConfigError`.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from mailtalk import defaults as D


class ConfigError(Exception):
    """A configuration problem; str() is the one line to show the postmaster."""


# --- value parsers: each takes the raw TOML value, returns the typed value or
# raises ValueError with what was expected.

def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def _int_min(lo: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer, got {type(v).__name__}")
        if v < lo:
            raise ValueError(f"must be at least {lo}, got {v}")
        return v
    return parse


def _pos_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number, got {type(v).__name__}")
    if v <= 0:
        raise ValueError(f"must be greater than 0, got {v}")
    return float(v)


def _str_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a list of strings")
    return tuple(v)


_LOG_LEVELS = ("debug", "info", "warning", "error")


def _one_of(v: Any, choices: tuple[str, ...]) -> str:
    s = _str(v)
    if s not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {v!r}")
    return s


def _log_level(v: Any) -> str:
    s = _str(v).lower()
    if s not in _LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(_LOG_LEVELS)}, got {v!r}")
    return s


def _event_loop(v: Any) -> str:
    s = _one_of(v, ("auto", "uvloop", "asyncio"))
    if s == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ValueError("uvloop is not installed (pip install uvloop, or \"auto\")")
    return s


_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def parse_domain(v: Any) -> str:
    s = _str(v).strip().rstrip(".").lower()
    if not _DOMAIN_RE.match(s):
        raise ValueError(f"not a domain name: {v!r}")
    return s


def _domains(v: Any) -> tuple[str, ...]:
    return tuple(parse_domain(x) for x in _str_list(v))


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
    s = _str(v).strip()
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


def _hostport(v: Any) -> HostPort:
    return parse_hostport(v)


def _nameservers(v: Any) -> tuple[HostPort, ...]:
    out = []
    for item in _str_list(v):
        hp = parse_hostport(item, default_port=53)
        try:
            ipaddress.ip_address(hp.host)
        except ValueError:
            raise ValueError(f"a nameserver must be an IP address, got {item!r}") from None
        out.append(hp)
    return tuple(out)


def parse_milter_socket(v: Any) -> str:
    """pymilter's form: `inet:PORT@HOST`, `inet6:PORT@HOST`, `unix:/path` (or `local:`)."""
    s = _str(v).strip()
    m = re.fullmatch(r"(inet6?):(\d+)(?:@(.+))?", s)
    if m:
        _port(m.group(2), v)
        return s
    m = re.fullmatch(r"(unix|local):(/.+)", s)
    if m:
        return s
    raise ValueError(f"expected inet:PORT@HOST or unix:/path, got {v!r}")


def parse_base_url(v: Any) -> str:
    s = _str(v).strip()
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


def _path(v: Any) -> Path:
    s = _str(v)
    if not s:
        raise ValueError("expected a file path, got an empty string")
    return Path(s).expanduser()


def _database(v: Any) -> str:
    s = _str(v).strip()
    if not s:
        raise ValueError("expected a file path or a database URL")
    if "://" in s and not s.startswith(("sqlite://", "postgresql://", "postgres://")):
        raise ValueError(f"expected a file path, sqlite:///path or postgresql://..., got {v!r}")
    return s


# --- the sections

@dataclass(frozen=True)
class SiteConfig:
    state_dir: Path
    secret_file: Path
    mail_id_lifetime_days: int
    log_level: str
    event_loop: str            # "auto", "uvloop" or "asyncio"


@dataclass(frozen=True)
class DomainsConfig:
    names: tuple[str, ...]
    login_domain: str          # appended to a SASL login that has no '@'


@dataclass(frozen=True)
class MilterConfig:
    socket: str
    timeout: int
    outbox: Path
    presence_api: str          # base URL the outbox hands records to (this site's service)
    body_text_limit: int
    outbox_retry_max: float
    socket_group: str          # group given a unix: socket (0660); empty: 0666


@dataclass(frozen=True)
class FilterConfig:
    listen: HostPort
    reinject: HostPort
    lookup_timeout: float
    max_message_size: int
    lookup_concurrency_per_domain: int
    reinject_timeout: float
    reinject_idle_connections: int
    reinject_idle_seconds: float
    mode: str                  # "smtp" (Postfix content filter) or "milter" (Sendmail)
    milter_socket: str         # where the receiving milter listens (mode = "milter")


@dataclass(frozen=True)
class PresenceConfig:
    listen: HostPort
    public_url: str
    database: str
    link_lifetime_days: int
    session_lifetime_hours: int
    idle_away_seconds: int
    heartbeat_seconds: int
    login_attempts_per_minute: int
    lookups_per_minute_per_client: int
    chat_message_max_chars: int
    chat_messages_per_minute: int


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[HostPort, ...]
    negative_ttl: int
    max_ttl: int


@dataclass(frozen=True)
class Config:
    source: str                               # file path, or "embedded defaults"
    site: SiteConfig
    domains: DomainsConfig
    milter: MilterConfig
    filter: FilterConfig
    presence: PresenceConfig
    dns: DnsConfig
    sections: frozenset[str] = field(default_factory=frozenset)  # present in the file

    def has(self, section: str) -> bool:
        return section in self.sections


_DERIVED = object()   # default computed from other keys in _build()

# section -> key -> (parser, default)
SCHEMA: dict[str, dict[str, tuple[Callable[[Any], Any], Any]]] = {
    "site": {
        "state_dir": (_path, _DERIVED),
        "secret_file": (_path, _DERIVED),
        "mail_id_lifetime_days": (_int_min(1), D.MAIL_ID_LIFETIME_DAYS),
        "log_level": (_log_level, D.LOG_LEVEL),
        "event_loop": (_event_loop, D.EVENT_LOOP),
    },
    "domains": {
        "names": (_domains, []),
        "login_domain": (parse_domain, _DERIVED),
    },
    "milter": {
        "socket": (parse_milter_socket, D.MILTER_SOCKET),
        "timeout": (_int_min(1), D.MILTER_TIMEOUT),
        "outbox": (_path, _DERIVED),
        "presence_api": (parse_base_url, _DERIVED),
        "body_text_limit": (_int_min(0), D.BODY_TEXT_LIMIT),
        "outbox_retry_max": (_pos_float, D.OUTBOX_RETRY_MAX),
        "socket_group": (_str, D.MILTER_SOCKET_GROUP),
    },
    "filter": {
        "listen": (_hostport, D.FILTER_LISTEN),
        "reinject": (_hostport, D.FILTER_REINJECT),
        "lookup_timeout": (_pos_float, D.LOOKUP_TIMEOUT),
        "max_message_size": (_int_min(1024), D.MAX_MESSAGE_SIZE),
        "lookup_concurrency_per_domain": (_int_min(1), D.LOOKUP_CONCURRENCY_PER_DOMAIN),
        "reinject_timeout": (_pos_float, D.REINJECT_TIMEOUT),
        "reinject_idle_connections": (_int_min(0), D.REINJECT_IDLE_CONNECTIONS),
        "reinject_idle_seconds": (_pos_float, D.REINJECT_IDLE_SECONDS),
        "mode": (lambda v: _one_of(v, ("smtp", "milter")), D.FILTER_MODE),
        "milter_socket": (parse_milter_socket, D.FILTER_MILTER_SOCKET),
    },
    "presence": {
        "listen": (_hostport, D.PRESENCE_LISTEN),
        "public_url": (parse_base_url, D.PRESENCE_PUBLIC_URL),
        "database": (_database, _DERIVED),
        "link_lifetime_days": (_int_min(1), D.LINK_LIFETIME_DAYS),
        "session_lifetime_hours": (_int_min(1), D.SESSION_LIFETIME_HOURS),
        "idle_away_seconds": (_int_min(1), D.IDLE_AWAY_SECONDS),
        "heartbeat_seconds": (_int_min(1), D.HEARTBEAT_SECONDS),
        "login_attempts_per_minute": (_int_min(1), D.LOGIN_ATTEMPTS_PER_MINUTE),
        "lookups_per_minute_per_client": (_int_min(1), D.LOOKUPS_PER_MINUTE_PER_CLIENT),
        "chat_message_max_chars": (_int_min(1), D.CHAT_MESSAGE_MAX_CHARS),
        "chat_messages_per_minute": (_int_min(1), D.CHAT_MESSAGES_PER_MINUTE),
    },
    "dns": {
        "nameservers": (_nameservers, D.DNS_NAMESERVERS),
        "negative_ttl": (_int_min(0), D.DNS_NEGATIVE_TTL),
        "max_ttl": (_int_min(0), D.DNS_MAX_TTL),
    },
}

SECTION_TYPES = {
    "site": SiteConfig, "domains": DomainsConfig, "milter": MilterConfig,
    "filter": FilterConfig, "presence": PresenceConfig, "dns": DnsConfig,
}


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path(D.STATE_DIR_ROOT)
    xdg = os.environ.get("XDG_STATE_HOME")
    return Path(xdg, "mailtalk") if xdg else Path(D.STATE_DIR_USER).expanduser()


def _parse_sections(raw: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for section, table in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"{where}: [{section}]: unknown section "
                              f"(known: {', '.join(SCHEMA)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: {section}: expected a [{section}] table")
        values = {}
        for key, value in table.items():
            spec = SCHEMA[section].get(key)
            if spec is None:
                raise ConfigError(f"{where}: [{section}] {key}: unknown key "
                                  f"(known: {', '.join(SCHEMA[section])})")
            try:
                values[key] = spec[0](value)
            except ValueError as e:
                raise ConfigError(f"{where}: [{section}] {key}: {e}") from None
        out[section] = values
    return out


def _build(given: dict[str, dict[str, Any]], source: str) -> Config:
    def section_values(name: str) -> dict[str, Any]:
        # Defaults go through the same parsers as the file's values.
        vals = {k: d if d is _DERIVED else parse(d) for k, (parse, d) in SCHEMA[name].items()}
        vals.update(given.get(name, {}))
        return vals

    site = section_values("site")
    if site["state_dir"] is _DERIVED:
        site["state_dir"] = default_state_dir()
    if site["secret_file"] is _DERIVED:
        site["secret_file"] = site["state_dir"] / D.SECRET_FILE_NAME

    domains = section_values("domains")
    if domains["login_domain"] is _DERIVED:
        domains["login_domain"] = domains["names"][0] if domains["names"] else ""

    presence = section_values("presence")
    if presence["database"] is _DERIVED:
        presence["database"] = str(site["state_dir"] / D.DATABASE_FILE_NAME)

    milter = section_values("milter")
    if milter["outbox"] is _DERIVED:
        milter["outbox"] = site["state_dir"] / D.OUTBOX_FILE_NAME
    if milter["presence_api"] is _DERIVED:
        milter["presence_api"] = f"http://{presence['listen']}"

    for needs in ("milter", "presence"):
        if needs in given and not domains["names"]:
            raise ConfigError(f"{source}: [domains] names: must list at least one "
                              f"mail domain of this site (needed by [{needs}])")

    return Config(
        source=source,
        site=SiteConfig(**site),
        domains=DomainsConfig(**domains),
        milter=MilterConfig(**milter),
        filter=FilterConfig(**section_values("filter")),
        presence=PresenceConfig(**presence),
        dns=DnsConfig(**section_values("dns")),
        sections=frozenset(given),
    )


def parse_text(text: str, source: str) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return _build(_parse_sections(raw, source), source)


def load_file(path: str | os.PathLike[str]) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"{path}: cannot read the config file: {reason}") from None
    return parse_text(text, str(path))


EMBEDDED = "embedded defaults"


def load_embedded() -> Config:
    """The built-in trial config: every service on loopback, SQLite, domain `localhost`."""
    text = resources.files("mailtalk").joinpath("default.toml").read_text(encoding="utf-8")
    return parse_text(text, EMBEDDED)


def resolve_path(cli_path: str | None) -> tuple[str, bool]:
    """Which config file to read: -c, else $MAILTALK_CONFIG, else the default path.

    Returns (path, explicit): an explicit path must exist; the default may be absent,
    and then the embedded defaults are used.
    """
    if cli_path:
        return cli_path, True
    env = os.environ.get(D.CONFIG_ENV)
    if env:
        return env, True
    return D.CONFIG_PATH, False


def load(cli_path: str | None) -> Config:
    path, explicit = resolve_path(cli_path)
    if not explicit and not os.path.exists(path):
        return load_embedded()
    return load_file(path)
