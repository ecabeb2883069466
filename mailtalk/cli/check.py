"""`mailtalk dns` and `mailtalk check`: the postmaster's tools.

`dns` prints the `_mailtalk` TXT record of every `[domains] names` entry.
`check` prints one line per finding, `ok`, `FAIL` (with what to do) or `skip`, and
exits 0 when nothing failed, 1 otherwise. It asks the DNS through `[dns]
nameservers` as the receiving filters of other sites will, fetches
`<public_url>/openapi.json`, probes the milter socket with a milter option
negotiation, reads the SMTP greeting of the filter and of the re-injection service
(with `[filter] mode = "milter"`: probes `[filter] milter_socket` as a milter
instead; `listen` and `reinject` are unused then), and, where `postconf` exists,
looks for our lines in Postfix's config (`MAIL_CONFIG=/etc/postfix-x mailtalk check`
for another Postfix instance).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from mailtalk.cli import check_postfix as ops_postfix
from mailtalk.config import Config, HostPort
from mailtalk.config_values import UnixPath
from mailtalk.constants import DNS_LABEL, DNS_VERSION
from mailtalk import discovery
from mailtalk.discovery import BadRecord, parse_endpoint
from mailtalk.lookup_signing import (SigningKeyError, load_or_create_signing_key,
                                     public_key_text)

RECORD_TTL = 3600
PROBE_TIMEOUT = 5.0          # seconds for each network probe of `check`
TXT_STRING_MAX = 255         # one character-string of a TXT record (RFC 1035)


@dataclass(frozen=True)
class Finding:
    state: str               # "ok" | "FAIL" | "skip"
    text: str

    def __str__(self) -> str:
        return f"{self.state:<4} {self.text}"


def ok(text: str) -> Finding:
    return Finding("ok", text)


def fail(text: str) -> Finding:
    return Finding("FAIL", text)


def skip(text: str) -> Finding:
    return Finding("skip", text)


# --- mailtalk dns

def record_text(public_url: str, key: str | None = None) -> str:
    """`v=mailtalk1; api=<URL>[; k=<lookup signing key>]`."""
    return f"{DNS_VERSION}; api={public_url.rstrip('/')}" + (f"; k={key}" if key else "")


def signing_key(cfg: Config) -> str | None:
    """The `k=` value of this site's lookup signing key (made if missing), or None
    (said on stderr) when the file cannot be read or made."""
    try:
        return public_key_text(load_or_create_signing_key(cfg.site.signing_key_file))
    except SigningKeyError as e:
        print(f"mailtalk: warning: no k= in the record: {e}", file=sys.stderr)
        return None


def zone_line(domain: str, public_url: str, key: str | None = None) -> str:
    """The zone-file line of `domain`'s record; long values split into 255-byte strings."""
    text = record_text(public_url, key)
    strings = " ".join(f'"{text[i:i + TXT_STRING_MAX]}"'
                       for i in range(0, len(text), TXT_STRING_MAX))
    return f"{DNS_LABEL}.{domain}. {RECORD_TTL} IN TXT {strings}"


def dns_records(cfg: Config) -> int:
    if not cfg.domains.names:
        print(f"mailtalk: {cfg.source}: [domains] names is empty: no record to publish",
              file=sys.stderr)
        return 1
    try:
        parse_endpoint(cfg.presence.public_url)
    except BadRecord as e:
        print(f"mailtalk: warning: other sites will refuse this record: {e}", file=sys.stderr)
    key = signing_key(cfg)
    for domain in cfg.domains.names:
        print(zone_line(domain, cfg.presence.public_url, key))
    return 0


# --- mailtalk check

async def _check_config(cfg: Config) -> list[Finding]:
    sections = sorted(s for s in ("milter", "filter", "presence") if cfg.has(s))
    out = [ok(f"config {cfg.source}: services {', '.join(sections) or 'none'}")]
    if not sections:
        out.append(fail("config: no [milter], [filter] or [presence] section: "
                        "add the sections this host runs"))
    if _publishes(cfg):
        try:
            parse_endpoint(cfg.presence.public_url)
        except BadRecord as e:
            out.append(fail(f"[presence] public_url {cfg.presence.public_url}: {e}; other "
                            "sites refuse it: use https:// (a TLS proxy in front)"))
    return out + _check_modes(cfg)


def _check_modes(cfg: Config) -> list[Finding]:
    """Keys and databases hold secrets and mail data: for the service's user only."""
    files = [("[site] secret_file", cfg.site.secret_file),
             ("[site] signing_key_file", cfg.site.signing_key_file)]
    if cfg.has("presence") and "://" not in cfg.presence.database:
        files.append(("[presence] database", Path(cfg.presence.database)))
    out = []
    for key, path in files:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue                 # not made yet: made 0600 at first start
        if mode & 0o077:
            out.append(fail(f"{key} {path}: mode {mode:o}, readable by others: "
                            f"chmod 600 {path} (the services tighten it at start)"))
    return out


def _publishes(cfg: Config) -> bool:
    """A site that sends (milter) or serves presence must publish its records."""
    return bool(cfg.domains.names) and (cfg.has("presence") or cfg.has("milter"))


def _transient(error: str) -> bool:
    return error == "timeout" or error.startswith("dns error")


async def _check_resolver(cfg: Config, servers: str) -> list[Finding]:
    """A receiving-only host: does the resolver the filter uses answer at all?"""
    if not cfg.has("filter") or not cfg.domains.names:
        return [skip("DNS: no [milter] or [presence] here: this host publishes no record")]
    domain = cfg.domains.names[0]
    found = await discovery.for_config(cfg).discover(domain, timeout=PROBE_TIMEOUT)
    if _transient(found.error):
        return [fail(f"DNS: {servers} gave {found.error} for {DNS_LABEL}.{domain}: the "
                     f"filter cannot find senders' presence services; check [dns] nameservers")]
    return [ok(f"DNS: {servers} answers (asked for {DNS_LABEL}.{domain})")]


async def _check_dns(cfg: Config) -> list[Finding]:
    servers = ", ".join(map(str, cfg.dns.nameservers)) or "the system resolver"
    if not _publishes(cfg):
        return await _check_resolver(cfg, servers)
    want = cfg.presence.public_url.rstrip("/")
    disc = discovery.for_config(cfg)
    answers = await asyncio.gather(*(disc.discover(d, timeout=PROBE_TIMEOUT)
                                     for d in cfg.domains.names))
    key = signing_key(cfg) if cfg.has("filter") else None
    out = []
    static = dict(cfg.dns.static)
    for domain, found in zip(cfg.domains.names, answers, strict=True):
        name = f"{DNS_LABEL}.{domain}"
        publish = f"publish: {zone_line(domain, want, key)}"
        if domain in static:
            out.append(ok(f"DNS {name}: from [dns] static = \"{static[domain]}\" (this "
                          f"host's services only; other sites need it in DNS)"))
        elif found.endpoint is not None and found.endpoint.api == want:
            if key is not None and key not in found.endpoint.keys:
                out.append(fail(f"DNS {name}: k= does not have this site's lookup signing "
                                f"key: other sites give its recipients no links; {publish}"))
            else:
                out.append(ok(f"DNS {name}: api={want}" + (" with our k=" if key else "")))
        elif found.endpoint is not None:
            out.append(fail(f"DNS {name}: api={found.endpoint.api} is not [presence] "
                            f"public_url {want}; {publish}"))
        elif _transient(found.error):
            out.append(fail(f"DNS {name}: {found.error} asking {servers}: "
                            f"check [dns] nameservers and that the DNS server answers"))
        else:
            out.append(fail(f"DNS {name}: {found.error}; {publish}"))
    return out


async def _get_openapi(session: aiohttp.ClientSession, base: str) -> str | None:
    """None if `base` serves our OpenAPI document, else what went wrong."""
    url = base.rstrip("/") + "/openapi.json"
    try:
        async with session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                return f"{url}: HTTP {resp.status}"
            doc = json.loads(await resp.content.read(4 * 1024 * 1024))
            if not isinstance(doc, dict) or "openapi" not in doc:
                return f"{url}: not an OpenAPI document"
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as e:
        return f"{url}: {type(e).__name__}: {e}"
    return None


async def _check_presence(cfg: Config) -> list[Finding]:
    targets: dict[str, str] = {}
    if cfg.has("presence"):
        targets[f"http://{cfg.presence.listen}"] = "[presence] listen"
    if _publishes(cfg):
        targets.setdefault(cfg.presence.public_url, "[presence] public_url")
    if cfg.has("milter"):
        targets.setdefault(cfg.milter.presence_api, "[milter] presence_api")
    if not targets:
        return [skip("presence service: no [presence] or [milter] here")]
    out = []
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        for base, key in targets.items():
            err = await _get_openapi(session, base)
            if err is None:
                out.append(ok(f"presence service answers at {base} ({key})"))
                out.append(await _readyz(session, base, key))
            else:
                out.append(fail(f"presence service ({key}) does not answer: {err}; start "
                                f"`mailtalk presence` (or `mailtalk run`), check the proxy"))
    return out


async def _readyz(session: aiohttp.ClientSession, base: str, key: str) -> Finding:
    """The service's own view: /readyz (its database answers; with Redis, it hears
    the other processes)."""
    url = base.rstrip("/") + "/readyz"
    try:
        async with session.get(url, allow_redirects=False) as resp:
            if resp.status not in (200, 503):
                return fail(f"presence service ({key}): {url}: HTTP {resp.status} (not "
                            f"this version of mailtalk's presence service?)")
            doc = json.loads(await resp.content.read(65536))
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as e:
        return fail(f"presence service ({key}): {url}: {type(e).__name__}: {e}")
    if resp.status == 200 and isinstance(doc, dict) and doc.get("ready") is True:
        parts = ["database ok"]
        if "redis" in doc:
            parts.append(f"Redis ok, {doc.get('processes')} process(es) heard")
        return ok(f"presence service ready ({url}: {', '.join(parts)})")
    return fail(f"presence service ({key}) not ready: {url} says {doc}; see its log")


def _milter_address(sock: str) -> tuple[int, str | tuple[str, int]]:
    kind, _, rest = sock.partition(":")
    if kind in ("unix", "local"):
        return socket.AF_UNIX, rest
    port, _, host = rest.partition("@")
    family = socket.AF_INET6 if kind == "inet6" else socket.AF_INET
    default = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    return family, (host or default, int(port))


def _probe_milter(sock: str) -> str | None:
    """Open the milter socket and negotiate options as an MTA does; None if a milter answers."""
    family, addr = _milter_address(sock)
    if family == socket.AF_UNIX:
        assert isinstance(addr, str)
        try:
            mode = os.stat(addr).st_mode
        except FileNotFoundError:
            return f"no socket at {addr}"
        except OSError as e:
            return f"cannot look at {addr}: {e.strerror or e}"
        if not stat.S_ISSOCK(mode):
            return f"{addr} is not a socket"
    optneg = b"O" + struct.pack(">III", 6, 0x1FF, 0x1FFFFF)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(PROBE_TIMEOUT)
            s.connect(addr)
            s.sendall(struct.pack(">I", len(optneg)) + optneg)
            head = s.recv(5)
            try:
                s.sendall(struct.pack(">I", 1) + b"Q")   # quit, politely; best effort
            except OSError:
                pass
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    if len(head) < 5 or head[4:5] != b"O":
        return "something answers, but not a milter"
    return None


def _connect(where: HostPort | UnixPath) -> socket.socket:
    if isinstance(where, UnixPath):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(PROBE_TIMEOUT)
        try:
            s.connect(where.path)
        except OSError:
            s.close()
            raise
        return s
    return socket.create_connection((where.host, where.port), timeout=PROBE_TIMEOUT)


def _probe_smtp(hp: HostPort | UnixPath) -> str | None:
    """Read the 220 greeting; None if an SMTP or LMTP server answers."""
    try:
        with _connect(hp) as s:
            greeting = s.recv(512)
            try:
                s.sendall(b"QUIT\r\n")
            except OSError:
                pass
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    if not greeting.startswith(b"220"):
        return f"greeting is not 220: {greeting[:60]!r}"
    return None


async def _check_sockets(cfg: Config) -> list[Finding]:
    out = []
    if cfg.has("milter"):
        err = await asyncio.to_thread(_probe_milter, cfg.milter.socket)
        out.append(ok(f"milter answers on {cfg.milter.socket}") if err is None else
                   fail(f"milter on {cfg.milter.socket}: {err}; start `mailtalk milter` "
                        f"(or `mailtalk run`)"))
    else:
        out.append(skip("milter: no [milter] section"))
    if cfg.has("filter") and cfg.filter.mode == "milter":
        # Sendmail's form: the receiving milter; no SMTP listener, nothing re-injected.
        sock = cfg.filter.milter_socket
        err = await asyncio.to_thread(_probe_milter, sock)
        out.append(ok(f"receiving milter answers on {sock} ([filter] milter_socket)")
                   if err is None else
                   fail(f"receiving milter on {sock} ([filter] milter_socket): {err}; start "
                        f"`mailtalk filter` (or `mailtalk run`); until then Sendmail (F=T) "
                        f"defers mail, Postfix does what milter_default_action says"))
    elif cfg.has("filter") and cfg.filter.mode == "lmtp":
        fc = cfg.filter
        err = await asyncio.to_thread(_probe_smtp, fc.listen)
        out.append(ok(f"LMTP hook answers on {fc.listen}") if err is None else
                   fail(f"LMTP hook on {fc.listen}: {err}; start `mailtalk filter` (or "
                        f"`mailtalk run`); until then the MTA defers delivery"))
        err = await asyncio.to_thread(_probe_smtp, fc.lmtp_next)
        out.append(ok(f"LMTP server answers on {fc.lmtp_next} ([filter] lmtp_next)")
                   if err is None else
                   fail(f"LMTP server on {fc.lmtp_next} ([filter] lmtp_next): {err}; point "
                        f"lmtp_next at your mailbox server's LMTP listener (Dovecot: "
                        f"service lmtp)"))
    elif cfg.has("filter"):
        err = await asyncio.to_thread(_probe_smtp, cfg.filter.listen)
        out.append(ok(f"filter answers on {cfg.filter.listen}") if err is None else
                   fail(f"filter on {cfg.filter.listen}: {err}; start `mailtalk filter` "
                        f"(or `mailtalk run`); until then Postfix defers mail"))
        err = await asyncio.to_thread(_probe_smtp, cfg.filter.reinject)
        out.append(ok(f"re-injection answers on {cfg.filter.reinject}") if err is None else
                   fail(f"re-injection on {cfg.filter.reinject}: {err}; add Postfix's "
                        f"re-injection service to master.cf (deploy/postfix/) and reload"))
    else:
        out.append(skip("filter: no [filter] section"))
    return out


async def run_checks(cfg: Config) -> list[Finding]:
    findings = await _check_config(cfg)
    findings += await _check_dns(cfg)
    findings += await _check_presence(cfg)
    findings += await _check_sockets(cfg)
    findings += [Finding(s, t) for s, t in await asyncio.to_thread(ops_postfix.check, cfg)]
    return findings


def check(cfg: Config) -> int:
    findings = asyncio.run(run_checks(cfg))
    for f in findings:
        print(f)
    failed = sum(f.state == "FAIL" for f in findings)
    print(f"mailtalk check: {failed} problem{'s' if failed != 1 else ''}" if failed
          else "mailtalk check: all well")
    return 1 if failed else 0
