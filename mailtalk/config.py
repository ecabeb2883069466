"""The one configuration loader: TOML in, checked and typed dataclasses out.

Every key is declared once below with its parser and default (the defaults live in
`defaults.py`). An unknown section or key, a wrong type or a bad value stops start-up
with one line naming the file and the key: `ConfigError`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from mailtalk import defaults as D
from mailtalk.config_values import (HostPort, UnixPath, boolean, database, domain_list, endpoint,
                                    STATIC_SELF, event_loop, hostport, is_loopback_host,
                                    ImapServer, email_address, imap_server, networks,
                                    optional_endpoint, redis_url, static_records,
                                    submit_target,
                                    int_min, log_level, nameservers, one_of, optional_path,
                                    parse_base_url,
                                    parse_domain, parse_milter_socket, path_value, pos_float,
                                    text)


class ConfigError(Exception):
    """A configuration problem; str() is the one line to show the postmaster."""


# --- the sections

@dataclass(frozen=True)
class SiteConfig:
    state_dir: Path
    secret_file: Path
    signing_key_file: Path     # the Ed25519 key that signs this site's lookups
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
    listen: HostPort | UnixPath     # a unix: path only with mode = "lmtp"
    reinject: HostPort
    lookup_timeout: float
    max_message_size: int
    lookup_concurrency_per_domain: int
    reinject_timeout: float
    reinject_idle_connections: int
    reinject_idle_seconds: float
    mode: str                  # "smtp" (content filter), "milter" (Sendmail) or "lmtp"
    milter_socket: str         # where the receiving milter listens (mode = "milter")
    notice: bool               # the visible notice with the link in the text part
    notice_text_template: Path | None     # a site's own wording (None: the built-in)
    notice_html_template: Path | None
    dkim: str                  # "off" | "report" | "require": claims and DKIM (dkim_claim)
    authserv_id: str           # our DKIM verifier's authserv-id in Authentication-Results
    lmtp_next: HostPort | UnixPath   # the site's LMTP server (mode = "lmtp")
    socket_group: str          # group given a unix: listen socket (0660); empty: 0666


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
    trusted_proxies: tuple[Any, ...]   # TLS proxies whose X-Forwarded-For is believed
    redis: str                 # "": one process; else the bus between processes (bus.py)
    retention_days: int        # mail records and their chats kept this long
    digest: bool               # mail a participant what they missed in a quiet chat
    digest_after_minutes: float
    digest_from: str
    submit: HostPort | Path    # the site's MTA for digests: SMTP, or the sendmail command
    auth: str                  # "local" | "imap" | "dovecot": who checks chat passwords
    imap: ImapServer | None    # auth = "imap": the site's IMAP server
    dovecot_auth: HostPort | UnixPath | None   # auth = "dovecot": its auth-client socket


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[HostPort, ...]
    negative_ttl: int
    max_ttl: int
    static: tuple[tuple[str, str], ...] = ()   # (domain, record or "self"), no DNS asked


@dataclass(frozen=True)
class MetricsConfig:
    listen: HostPort | None    # the process's own /metrics and /healthz listener
    allow: tuple[Any, ...]     # who may read /metrics (the presence service's too)


@dataclass(frozen=True)
class Config:
    source: str                               # file path, or "embedded defaults"
    site: SiteConfig
    domains: DomainsConfig
    milter: MilterConfig
    filter: FilterConfig
    presence: PresenceConfig
    dns: DnsConfig
    metrics: MetricsConfig = MetricsConfig(None, ())
    sections: frozenset[str] = field(default_factory=frozenset)  # present in the file

    def has(self, section: str) -> bool:
        return section in self.sections


_DERIVED = object()   # default computed from other keys in _build()

# section -> key -> (parser, default)
SCHEMA: dict[str, dict[str, tuple[Callable[[Any], Any], Any]]] = {
    "site": {
        "state_dir": (path_value, _DERIVED),
        "secret_file": (path_value, _DERIVED),
        "signing_key_file": (path_value, _DERIVED),
        "mail_id_lifetime_days": (int_min(1), D.MAIL_ID_LIFETIME_DAYS),
        "log_level": (log_level, D.LOG_LEVEL),
        "event_loop": (event_loop, D.EVENT_LOOP),
    },
    "domains": {
        "names": (domain_list, []),
        "login_domain": (parse_domain, _DERIVED),
    },
    "milter": {
        "socket": (parse_milter_socket, D.MILTER_SOCKET),
        "timeout": (int_min(1), D.MILTER_TIMEOUT),
        "outbox": (path_value, _DERIVED),
        "presence_api": (parse_base_url, _DERIVED),
        "body_text_limit": (int_min(0), D.BODY_TEXT_LIMIT),
        "outbox_retry_max": (pos_float, D.OUTBOX_RETRY_MAX),
        "socket_group": (text, D.MILTER_SOCKET_GROUP),
    },
    "filter": {
        "listen": (endpoint, _DERIVED),
        "reinject": (hostport, D.FILTER_REINJECT),
        "lookup_timeout": (pos_float, D.LOOKUP_TIMEOUT),
        "max_message_size": (int_min(1024), D.MAX_MESSAGE_SIZE),
        "lookup_concurrency_per_domain": (int_min(1), D.LOOKUP_CONCURRENCY_PER_DOMAIN),
        "reinject_timeout": (pos_float, D.REINJECT_TIMEOUT),
        "reinject_idle_connections": (int_min(0), D.REINJECT_IDLE_CONNECTIONS),
        "reinject_idle_seconds": (pos_float, D.REINJECT_IDLE_SECONDS),
        "mode": (lambda v: one_of(v, ("smtp", "milter", "lmtp")), D.FILTER_MODE),
        "milter_socket": (parse_milter_socket, D.FILTER_MILTER_SOCKET),
        "notice": (boolean, D.FILTER_NOTICE),
        "notice_text_template": (optional_path, ""),
        "notice_html_template": (optional_path, ""),
        "dkim": (lambda v: one_of(v, ("off", "report", "require")), "off"),
        "authserv_id": (text, ""),
        "lmtp_next": (endpoint, D.FILTER_LMTP_NEXT),
        "socket_group": (text, D.MILTER_SOCKET_GROUP),
    },
    "presence": {
        "listen": (hostport, D.PRESENCE_LISTEN),
        "public_url": (parse_base_url, D.PRESENCE_PUBLIC_URL),
        "database": (database, _DERIVED),
        "link_lifetime_days": (int_min(1), D.LINK_LIFETIME_DAYS),
        "session_lifetime_hours": (int_min(1), D.SESSION_LIFETIME_HOURS),
        "idle_away_seconds": (int_min(1), D.IDLE_AWAY_SECONDS),
        "heartbeat_seconds": (int_min(1), D.HEARTBEAT_SECONDS),
        "login_attempts_per_minute": (int_min(1), D.LOGIN_ATTEMPTS_PER_MINUTE),
        "lookups_per_minute_per_client": (int_min(1), D.LOOKUPS_PER_MINUTE_PER_CLIENT),
        "chat_message_max_chars": (int_min(1), D.CHAT_MESSAGE_MAX_CHARS),
        "chat_messages_per_minute": (int_min(1), D.CHAT_MESSAGES_PER_MINUTE),
        "trusted_proxies": (networks, []),
        "redis": (redis_url, ""),
        "retention_days": (int_min(1), _DERIVED),
        "digest": (boolean, True),
        "digest_after_minutes": (pos_float, D.DIGEST_AFTER_MINUTES),
        "digest_from": (email_address, _DERIVED),
        "submit": (submit_target, D.DIGEST_SUBMIT),
        "auth": (lambda v: one_of(v, ("local", "imap", "dovecot")), "local"),
        "imap": (imap_server, ""),
        "dovecot_auth": (optional_endpoint, ""),
    },
    "dns": {
        "nameservers": (nameservers, D.DNS_NAMESERVERS),
        "negative_ttl": (int_min(0), D.DNS_NEGATIVE_TTL),
        "max_ttl": (int_min(0), D.DNS_MAX_TTL),
        "static": (static_records, {}),
    },
    "metrics": {
        "listen": (lambda v: hostport(v) if text(v).strip() else None, ""),
        "allow": (networks, ["127.0.0.0/8", "::1"]),
    },
}

SECTION_TYPES = {
    "site": SiteConfig, "domains": DomainsConfig, "milter": MilterConfig,
    "filter": FilterConfig, "presence": PresenceConfig, "dns": DnsConfig,
    "metrics": MetricsConfig,
}


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path(D.STATE_DIR_ROOT)
    xdg = os.environ.get("XDG_STATE_HOME")
    return Path(xdg, "mailtalk") if xdg else Path(D.STATE_DIR_USER).expanduser()


def _elsewhere(key: str, section: str) -> str:
    """"here; it belongs in [x] " when another section has this key, else ""."""
    homes = [f"[{s}]" for s in SCHEMA if s != section and key in SCHEMA[s]]
    return f"here; it belongs in {' or '.join(homes)} " if homes else ""


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
                                  f"{_elsewhere(key, section)}(known: "
                                  f"{', '.join(SCHEMA[section])})")
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
    if site["signing_key_file"] is _DERIVED:
        site["signing_key_file"] = site["state_dir"] / D.SIGNING_KEY_FILE_NAME

    domains = section_values("domains")
    if domains["login_domain"] is _DERIVED:
        domains["login_domain"] = domains["names"][0] if domains["names"] else ""

    presence = _presence_values(section_values("presence"), site, domains, source)

    milter = section_values("milter")
    if milter["outbox"] is _DERIVED:
        milter["outbox"] = site["state_dir"] / D.OUTBOX_FILE_NAME
    if milter["presence_api"] is _DERIVED:
        milter["presence_api"] = f"http://{presence['listen']}"

    for needs in ("milter", "presence"):
        if needs in given and not domains["names"]:
            raise ConfigError(f"{source}: [domains] names: must list at least one "
                              f"mail domain of this site (needed by [{needs}])")

    filter_ = _filter_values(section_values("filter"), source)
    dns = section_values("dns")
    if any(r == STATIC_SELF for _, r in dns["static"]) and not is_loopback_host(
            urlsplit(presence["public_url"]).hostname or ""):
        raise ConfigError(f"{source}: [dns] static: \"{STATIC_SELF}\" needs a loopback "
                          f"[presence] public_url; a real site publishes its record in DNS")
    return Config(
        source=source,
        site=SiteConfig(**site),
        domains=DomainsConfig(**domains),
        milter=MilterConfig(**milter),
        filter=FilterConfig(**filter_),
        presence=PresenceConfig(**presence),
        dns=DnsConfig(**dns),
        metrics=MetricsConfig(**section_values("metrics")),
        sections=frozenset(given),
    )


def _presence_values(presence: dict[str, Any], site: dict[str, Any], domains: dict[str, Any],
                     source: str) -> dict[str, Any]:
    if presence["database"] is _DERIVED:
        presence["database"] = str(site["state_dir"] / D.DATABASE_FILE_NAME)
    if presence["retention_days"] is _DERIVED:
        presence["retention_days"] = presence["link_lifetime_days"] + D.RETENTION_EXTRA_DAYS
    if presence["retention_days"] < site["mail_id_lifetime_days"]:
        # A record gone while its Mail-ID is valid would read as "not recorded yet".
        raise ConfigError(f"{source}: [presence] retention_days: must be at least [site] "
                          f"mail_id_lifetime_days ({site['mail_id_lifetime_days']})")
    if presence["digest_from"] is _DERIVED:
        first = domains["names"][0] if domains["names"] else "localhost"
        presence["digest_from"] = f"mailtalk@{first}"
    for mode, key in (("imap", "imap"), ("dovecot", "dovecot_auth")):
        if presence["auth"] == mode and presence[key] is None:
            raise ConfigError(f"{source}: [presence] {key}: required with auth = \"{mode}\"")
    return presence


def _filter_values(filter_: dict[str, Any], source: str) -> dict[str, Any]:
    if filter_["listen"] is _DERIVED:
        filter_["listen"] = endpoint(D.FILTER_LMTP_LISTEN if filter_["mode"] == "lmtp"
                                     else D.FILTER_LISTEN)
    if isinstance(filter_["listen"], UnixPath) and filter_["mode"] != "lmtp":
        raise ConfigError(f"{source}: [filter] listen: a unix: socket is for mode = "
                          f"\"lmtp\"; the content filter listens on HOST:PORT")
    if filter_["dkim"] != "off" and not filter_["authserv_id"]:
        raise ConfigError(f"{source}: [filter] authserv_id: required with dkim = "
                          f"\"{filter_['dkim']}\" (the authserv-id your DKIM verifier "
                          f"writes in Authentication-Results)")
    return filter_


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
