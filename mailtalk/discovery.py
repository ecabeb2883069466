"""Finding a mail domain's presence service: the DNS TXT record `_mailtalk.<domain>`.

    _mailtalk.a.example. 3600 IN TXT "v=mailtalk1; api=https://chat.a.example; k=<key>"

The record is parsed strictly (the tags `v`, `api` and `k`, `v` first; `v` and `api`
once each, `k` (the lookup signing key, base64 of a raw Ed25519 public key:
`lookup_signing`) up to twice, for a key change; ASCII, at most `TXT_RECORD_MAX_BYTES`), and the endpoint must be `https://` unless
its host is a loopback address (test deployments). Answers are cached for their TTL,
at most `[dns] max_ttl`; a missing record (NXDOMAIN, no TXT, no mailtalk TXT) and a
bad one for `[dns] negative_ttl`. Transient failures (timeout, SERVFAIL) are not
cached. Lookups return a `DiscoveryResult`, never raise (CancelledError excepted).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from mailtalk.config import Config, DnsConfig, parse_domain
from mailtalk.config_values import STATIC_SELF, is_loopback_host
from mailtalk.lookup_signing import load_or_create_signing_key, public_key_text
from mailtalk.constants import DNS_CACHE_MAX_ENTRIES, DNS_LABEL, DNS_VERSION, TXT_RECORD_MAX_BYTES

log = logging.getLogger("mailtalk.discovery")

_KEY = re.compile(r"[A-Za-z0-9+/]{43}=")      # 32 raw bytes in base64


class BadRecord(ValueError):
    """A `_mailtalk` TXT record that does not follow the grammar; str() says why."""


@dataclass(frozen=True)
class Endpoint:
    """A presence service's base URL, as a domain publishes it."""
    api: str          # base URL without a trailing slash
    scheme: str
    host: str         # lower case; an IPv6 address without brackets
    port: int
    keys: tuple[str, ...] = ()    # the domain's lookup signing keys (k=), base64

    def same_origin(self, url: str) -> bool:
        """True if `url` has exactly this endpoint's scheme, host and port."""
        o = origin_of(url)
        return o is not None and o == (self.scheme, self.host, self.port)


@dataclass(frozen=True)
class DiscoveryResult:
    """The outcome of one discovery: an endpoint, or why there is none."""
    endpoint: Endpoint | None
    error: str = ""           # "", "no record", "bad record: ...", "timeout", ...
    cached: bool = False


def origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL with default ports filled in, else None."""
    try:
        p = urlsplit(url)
        port = p.port
    except ValueError:
        return None
    if p.scheme not in ("http", "https") or not p.hostname:
        return None
    return p.scheme, p.hostname.lower(), port or (443 if p.scheme == "https" else 80)


def _is_clean_ascii(s: str) -> bool:
    # Printable ASCII with no spaces: a record or URL that goes into a mail header
    # must not smuggle control characters, spaces or angle brackets.
    return all(0x21 <= ord(c) <= 0x7E for c in s)


def parse_endpoint(url: str) -> Endpoint:
    """Check a published base URL: http(s), a host, no credentials, query or fragment;
    https unless the host is loopback. Raises BadRecord."""
    if not url or not _is_clean_ascii(url) or any(c in url for c in '<>"\\'):
        raise BadRecord(f"api is not a clean URL: {url!r}")
    o = origin_of(url)
    if o is None:
        raise BadRecord(f"api is not an http(s) URL with a host: {url!r}")
    p = urlsplit(url)
    if p.username is not None or p.password is not None or p.query or p.fragment:
        raise BadRecord(f"api must have no credentials, query or fragment: {url!r}")
    scheme, host, port = o
    if scheme != "https" and not is_loopback_host(host):
        raise BadRecord(f"api must be https:// (http only on a loopback address): {url!r}")
    return Endpoint(api=url.rstrip("/"), scheme=scheme, host=host, port=port)


def parse_record(text: str) -> Endpoint:
    """Parse `v=mailtalk1; api=<URL>[; k=<key>][; k=<key>]` strictly. Raises BadRecord."""
    if len(text.encode("utf-8", "replace")) > TXT_RECORD_MAX_BYTES:
        raise BadRecord(f"longer than {TXT_RECORD_MAX_BYTES} bytes")
    if not text.isascii():
        raise BadRecord("not ASCII")
    parts = [p.strip() for p in text.split(";")]
    if parts and parts[-1] == "":
        parts.pop()                      # one trailing ';' is tolerated
    tags: dict[str, str] = {}
    keys: list[str] = []
    for i, part in enumerate(parts):
        name, eq, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name or not value:
            raise BadRecord(f"not a tag=value pair: {part!r}")
        if i == 0 and name != "v":
            raise BadRecord("must start with v=mailtalk1")
        if name == "k":
            if not _KEY.fullmatch(value) or len(keys) == 2:
                raise BadRecord("k= must be a base64 Ed25519 key, at most twice")
            keys.append(value)
            continue
        if name in tags:
            raise BadRecord(f"tag {name!r} given twice")
        if name not in ("v", "api"):
            raise BadRecord(f"unknown tag {name!r}")
        tags[name] = value
    if f"v={tags.get('v')}" != DNS_VERSION:
        raise BadRecord(f"must start with {DNS_VERSION}")
    if "api" not in tags:
        raise BadRecord("no api= tag")
    return dataclasses.replace(parse_endpoint(tags["api"]), keys=tuple(keys))


def _is_ours(text: str) -> bool:
    """Does this TXT string claim to be a mailtalk record (so that it must parse)?"""
    head = text.lstrip()
    rest = head[len(DNS_VERSION):len(DNS_VERSION) + 1]
    return head.startswith(DNS_VERSION) and rest in ("", ";", " ")


def choose_record(texts: list[str]) -> Endpoint | None:
    """Of all TXT strings at the name, the one mailtalk record; None if there is none.
    Raises BadRecord when it is malformed or there is more than one."""
    ours = [t for t in texts if _is_ours(t)]
    if not ours:
        return None
    if len(ours) > 1:
        raise BadRecord("more than one v=mailtalk1 record")
    return parse_record(ours[0])


class _Resolver(Protocol):
    async def resolve(self, qname: Any, rdtype: Any = ..., *args: Any, **kw: Any) -> Any: ...


def make_resolver(cfg: DnsConfig) -> dns.asyncresolver.Resolver:
    """dnspython's async resolver on `[dns] nameservers` (empty: /etc/resolv.conf)."""
    if cfg.nameservers:
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [dns.nameserver.Do53Nameserver(hp.host, hp.port) for hp in cfg.nameservers]
    else:
        try:
            r = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            log.error("no [dns] nameservers and no usable /etc/resolv.conf: "
                      "asking 127.0.0.1")
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = ["127.0.0.1"]
    r.cache = None                 # our own cache applies max_ttl and negative_ttl
    r.use_edns(0, 0, 4096)         # room for a long record without falling back to TCP
    return r


class Discoverer:
    """Resolves and caches `_mailtalk.<domain>` records; one per process."""

    def __init__(self, cfg: DnsConfig, *, resolver: _Resolver | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 static: Mapping[str, Endpoint] | None = None) -> None:
        """`static`: endpoints answered without DNS (`static_endpoints`)."""
        self._cfg = cfg
        self._static = dict(static or {})
        self._resolver = resolver if resolver is not None else make_resolver(cfg)
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, DiscoveryResult]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[DiscoveryResult]] = {}

    async def discover(self, domain: str, timeout: float = 5.0) -> DiscoveryResult:
        """The endpoint of `domain`'s presence service, from cache or DNS; the query
        gives up after `timeout` (dnspython's lifetime)."""
        try:
            domain = parse_domain(domain)
        except ValueError:
            return DiscoveryResult(None, f"bad domain: {domain!r}")
        if (fixed := self._static.get(domain)) is not None:
            return DiscoveryResult(fixed)
        hit = self._cache.get(domain)
        if hit is not None:
            if hit[0] > self._clock():
                return DiscoveryResult(hit[1].endpoint, hit[1].error, cached=True)
            del self._cache[domain]
        # Concurrent discoveries of one domain share one query; a caller's own
        # cancellation (the lookup's timeout) must not end it for the others.
        task = self._inflight.get(domain)
        if task is None:
            task = asyncio.ensure_future(self._query(domain, timeout))
            self._inflight[domain] = task
            task.add_done_callback(functools.partial(self._forget_task, domain))
        return await asyncio.shield(task)

    def _forget_task(self, domain: str, _task: asyncio.Task[DiscoveryResult]) -> None:
        self._inflight.pop(domain, None)

    async def _query(self, domain: str, timeout: float) -> DiscoveryResult:
        qname = f"{DNS_LABEL}.{domain}."
        try:
            answer = await self._resolver.resolve(qname, "TXT", lifetime=timeout, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return self._store(domain, DiscoveryResult(None, "no record"), self._cfg.negative_ttl)
        except dns.exception.Timeout:
            log.info("DNS %s: timeout", qname)
            return DiscoveryResult(None, "timeout")
        except asyncio.CancelledError:
            raise
        except Exception as e:       # SERVFAIL, refused, network: transient, not cached
            log.info("DNS %s: %s", qname, e)
            return DiscoveryResult(None, f"dns error: {type(e).__name__}")
        rrset = answer.rrset
        if rrset is None:
            return self._store(domain, DiscoveryResult(None, "no record"), self._cfg.negative_ttl)
        texts: list[str] = []
        for rdata in rrset:
            raw = b"".join(rdata.strings)
            texts.append(raw.decode("ascii", "replace"))   # non-ASCII fails the parse
        ttl = min(rrset.ttl, self._cfg.max_ttl)
        try:
            endpoint = choose_record(texts)
        except BadRecord as e:
            log.warning("DNS %s: bad mailtalk record: %s", qname, e)
            return self._store(domain, DiscoveryResult(None, f"bad record: {e}"),
                               min(ttl, self._cfg.negative_ttl))
        if endpoint is None:
            return self._store(domain, DiscoveryResult(None, "no record"), self._cfg.negative_ttl)
        log.debug("DNS %s: %s (ttl %s)", qname, endpoint.api, ttl)
        return self._store(domain, DiscoveryResult(endpoint), ttl)

    def _store(self, domain: str, result: DiscoveryResult, ttl: int) -> DiscoveryResult:
        if ttl > 0:
            self._cache[domain] = (self._clock() + ttl, result)
            self._cache.move_to_end(domain)
            while len(self._cache) > DNS_CACHE_MAX_ENTRIES:
                self._cache.popitem(last=False)
        return result


def static_endpoints(cfg: Config) -> dict[str, Endpoint]:
    """`[dns] static` as endpoints; "self" is the record `mailtalk dns` prints for this
    site: `[presence] public_url` and this site's lookup signing key (made if absent)."""
    out = {}
    for domain, record in cfg.dns.static:
        if record == STATIC_SELF:
            key = public_key_text(load_or_create_signing_key(cfg.site.signing_key_file))
            out[domain] = dataclasses.replace(parse_endpoint(cfg.presence.public_url),
                                              keys=(key,))
        else:
            out[domain] = parse_record(record)
    return out


def for_config(cfg: Config, resolver: _Resolver | None = None) -> Discoverer:
    """The Discoverer a service of this config uses: its DNS and its static records."""
    return Discoverer(cfg.dns, resolver=resolver, static=static_endpoints(cfg))
