"""The receiving hook's question to the sender domain's presence service.

`PresenceLookup.lookup(account, mail_id, recipients, message_id=...)` finds the
account domain's presence service through DNS (`discovery`), asks it `POST
/api/v1/lookup` with `{"account", "mail_id", "message_id", "recipients"}`, one request
per recipient domain (and per LOOKUP_MAX_RECIPIENTS), each signed with this site's
key under that domain's name (`lookup_signing`: the far side gives a link for a
recipient only to a request its domain signed), and returns a `LookupResult`.

It never raises (CancelledError excepted) and is the one place that bounds the
question in time: DNS and HTTP together end within `[filter] lookup_timeout`; every
failure (no record, bad record, DNS or HTTP error, timeout, oversize or malformed
answer) is an `unknown` result whose `reason` says why, for the caller's log line.

Safety: a returned link is kept only if it is a URL that fits our header grammar
(`online_header.safe_url`) on exactly the scheme, host and port of the endpoint that
the account's own domain publishes in DNS; links are never taken from the mail.
Answers are capped at LOOKUP_RESPONSE_MAX_BYTES a request; connections to one site at
`[filter] lookup_concurrency_per_domain` (more lookups wait for one, unless the site is
slow: then its mails get `unknown` at once), and a site that keeps failing is not asked
for a while (`site_breaker`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mailtalk import __version__, discovery, lookup_signing
from mailtalk.accounts import account_domain
from mailtalk.config import Config
from mailtalk.constants import API_LOOKUP, LOOKUP_MAX_RECIPIENTS, LOOKUP_RESPONSE_MAX_BYTES
from mailtalk.discovery import Discoverer, Endpoint
from mailtalk.online_header import STATUSES, safe_url, state_for
from mailtalk.site_breaker import SiteBreaker

log = logging.getLogger("mailtalk.lookup")


@dataclass(frozen=True)
class LookupResult:
    """The answer for one mail: the sender's status and a chat link per recipient."""
    status: str                 # online | away | busy | offline | unknown
    checked: datetime           # UTC, whole seconds
    links: dict[str, str] = field(default_factory=dict)   # recipient as asked -> URL
    reason: str = ""            # why `unknown`, for the log

    @property
    def state(self) -> str:
        """`yes` | `no` | `unknown` (online_header.state_for)."""
        return state_for(self.status)


class LookupFailed(Exception):
    """Why a lookup gave `unknown`: becomes the result's reason, never raised out."""


def _parse_checked(value: Any, fallback: datetime) -> datetime:
    if isinstance(value, str) and len(value) <= 64:
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            return fallback
        if t.tzinfo is not None:
            return t.astimezone(UTC).replace(microsecond=0)
    return fallback


def parse_answer(payload: Any, endpoint: Endpoint, asked: list[str],
                 now: datetime) -> LookupResult:
    """Check one answer of the service: the status, the time, and every link (only for
    a recipient asked about, only on the published origin). Raises LookupFailed."""
    if not isinstance(payload, dict) or payload.get("status") not in STATUSES:
        raise LookupFailed("answer has no valid status")
    raw_links = payload.get("links") or {}
    if not isinstance(raw_links, dict):
        raise LookupFailed("links is not an object")
    if payload["status"] == "unknown" and not raw_links:     # a refusal
        return LookupResult("unknown", _parse_checked(payload.get("checked"), now), {},
                            "the service does not know this mail")
    wanted = set(asked)
    links: dict[str, str] = {}
    for rcpt, url in raw_links.items():
        if rcpt not in wanted:
            continue                # never a link for someone we did not ask about
        if not isinstance(url, str) or not safe_url(url) or not endpoint.same_origin(url):
            log.warning("link for %s refused: not a clean URL on %s", rcpt, endpoint.api)
            continue
        links[rcpt] = url
    # `unknown` with links: the mail is known, its sender's presence is not (the
    # service's processes cannot see each other): links, and the header says unknown.
    why = "the service cannot tell the sender's presence" if payload["status"] == "unknown" else ""
    return LookupResult(payload["status"], _parse_checked(payload.get("checked"), now), links,
                        why)


class PresenceLookup:
    """One per process (or per filter): holds the DNS cache and the HTTP pool."""

    def __init__(self, cfg: Config, *, resolver: Any = None,
                 session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], float] = time.time,
                 signing_key: Ed25519PrivateKey | None = None) -> None:
        """`resolver`: a `Discoverer`, or a dnspython-style async resolver for one;
        `session`: an aiohttp session to use (not closed by `close`);
        `clock`: seconds since the epoch (`checked` when the service sends none, and
        the signatures' creation time); `signing_key`: this site's lookup signing key
        (None: unsigned lookups, which get presence but no links)."""
        self._timeout = cfg.filter.lookup_timeout
        self._key = signing_key
        self._cap = cfg.filter.lookup_concurrency_per_domain
        self._clock = clock
        self.discoverer = (resolver if isinstance(resolver, Discoverer)
                           else discovery.for_config(cfg, resolver))
        self._session = session
        self._own_session = session is None
        # Per sender site: a slow site gets at most `cap` lookups in flight, the rest
        # `unknown` at once (no queue behind it), and a breaker for a site that fails.
        self.breaker = SiteBreaker(self._cap, slow_after=self._timeout / 2)

    async def lookup(self, account: str, mail_id: str, recipients: list[str],
                     *, message_id: str = "", queue_id: str = "-") -> LookupResult:
        """Presence of `account` (a checked claim: receiving.read_claim) and a chat link
        per recipient (distinct, as the envelope has them); never raises."""
        started = time.monotonic()
        site = account_domain(account)
        if (refused := self.breaker.admit(site)) is not None:
            return self._unknown(refused)
        failed = True               # a timeout or a connection failure (site_breaker)
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._lookup(account, mail_id, message_id, recipients)
            failed = False
        except TimeoutError:
            result = self._unknown(f"no answer within {self._timeout}s")
        except LookupFailed as e:
            result, failed = self._unknown(str(e)), False      # an answer: the site is up
        except (aiohttp.ClientError, OSError) as e:
            result = self._unknown(f"{type(e).__name__}: {e}")
        except asyncio.CancelledError:
            self.breaker.done(site, failed=False)
            raise
        except Exception as e:    # fail open: the mail goes on with `unknown`
            log.exception("%s: lookup of %s failed", queue_id, account)
            result, failed = self._unknown(f"{type(e).__name__}: {e}"), False
        self.breaker.done(site, failed)
        log.debug("%s: lookup of %s: %s, %d links in %.1f ms%s", queue_id, account,
                  result.status, len(result.links), 1000 * (time.monotonic() - started),
                  f" ({result.reason})" if result.reason else "")
        return result

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC).replace(microsecond=0)

    def _unknown(self, reason: str) -> LookupResult:
        return LookupResult("unknown", self._now(), {}, reason)

    async def _lookup(self, account: str, mail_id: str, message_id: str,
                      recipients: list[str]) -> LookupResult:
        domain = account_domain(account)
        found = await self.discoverer.discover(domain, timeout=self._timeout)
        if found.endpoint is None:
            raise LookupFailed(f"_mailtalk.{domain}: {found.error}")
        by_domain: dict[str, list[str]] = {}
        for rcpt in recipients:
            by_domain.setdefault(rcpt.rpartition("@")[2].lower(), []).append(rcpt)
        asks = [(d, rs[i:i + LOOKUP_MAX_RECIPIENTS]) for d, rs in by_domain.items()
                for i in range(0, len(rs), LOOKUP_MAX_RECIPIENTS)] or [("", [])]
        body = {"account": account, "mail_id": mail_id, "message_id": message_id}
        results = await asyncio.gather(
            *(self._ask(found.endpoint, {**body, "recipients": c}, d) for d, c in asks))
        links: dict[str, str] = {}
        for r in results:
            links.update(r.links)
        return LookupResult(results[0].status, results[0].checked, links, results[0].reason)

    async def _ask(self, endpoint: Endpoint, request: dict[str, Any],
                   keyid: str) -> LookupResult:
        """One request: `keyid` is the recipients' domain, under whose name it is signed."""
        url = endpoint.api + API_LOOKUP
        body = json.dumps(request).encode()
        headers = {}
        if self._key is not None and keyid:
            headers = lookup_signing.sign(self._key, keyid, "POST", urlsplit(url).path,
                                          body, int(self._clock()))
        async with self._get_session().post(url, data=body, headers=headers,
                                            allow_redirects=False) as resp:
            if resp.status != 200:
                raise LookupFailed(f"{url}: HTTP {resp.status}")
            data = bytearray()
            async for part in resp.content.iter_chunked(16384):
                data += part
                if len(data) > LOOKUP_RESPONSE_MAX_BYTES:
                    raise LookupFailed(f"{url}: answer larger than "
                                       f"{LOOKUP_RESPONSE_MAX_BYTES} bytes")
        try:
            payload = json.loads(bytes(data))
        except ValueError:
            raise LookupFailed(f"{url}: answer is not JSON") from None
        try:
            return parse_answer(payload, endpoint, request["recipients"], self._now())
        except LookupFailed as e:
            raise LookupFailed(f"{url}: {e}") from None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # More than `cap` requests to one site wait for a connection (within the
            # lookup timeout); no cookies (a lookup carries no state); answers as they
            # are (a compressed one would not parse: unknown).
            connector = aiohttp.TCPConnector(limit=256, limit_per_host=self._cap,
                                             ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=self._timeout), auto_decompress=False,
                headers={"User-Agent": f"mailtalk/{__version__}",
                         "Content-Type": "application/json", "Accept-Encoding": "identity"})
        return self._session
