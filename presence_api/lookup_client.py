"""The receiving hook's question to the sender domain's presence service.

`PresenceLookup.lookup(account, mail_id, recipients)` finds the account domain's
presence service through DNS (`discovery`), asks it for `{"account", "mail_id",
"recipients"}` and returns a `LookupResult`. It never raises (CancelledError
excepted): every failure (no record, bad record, DNS or HTTP error, timeout, oversize
or malformed answer) is `unknown` with no links, and the whole lookup, DNS and HTTP
together, is bounded by `[filter] lookup_timeout`.

Safety: a returned link is kept only if it has the scheme, host and port of the
endpoint that the account's own domain publishes in DNS; links are never taken from
the mail. Answers are capped at `LOOKUP_RESPONSE_MAX_BYTES` a lookup, requests at
`LOOKUP_MAX_RECIPIENTS` recipients (more are split), requests in flight to one account
domain at `[filter] lookup_concurrency_per_domain`, and identical lookups in flight
share one answer.

Requests, their cap per domain and batching: `lookup_requests.py`.

A recipient without a link in `links` (its link was refused, or the service gave
none) gets no `chat=`; MISSION.md's grammar then calls for `unknown` for that one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from collections.abc import Callable
from typing import Any

import aiohttp

from mailtalk.accounts import account_domain, normalize_account
from mailtalk.config import Config
from mailtalk.constants import LOOKUP_MAX_RECIPIENTS
from mailtalk.mailid import is_well_formed
from presence_api.discovery import Discoverer, Endpoint
from presence_api.lookup_requests import Answer, LookupFailed, SiteRequests

log = logging.getLogger("mailtalk.lookup")

STATUSES = ("online", "away", "busy", "offline", "unknown")
# MISSION.md: yes for online, away and busy (the sender is there), no for offline.
STATE_OF_STATUS = {"online": "yes", "away": "yes", "busy": "yes", "offline": "no",
                   "unknown": "unknown"}
LINK_MAX_CHARS = 2048


@dataclass(frozen=True)
class LookupResult:
    state: str                  # "yes" | "no" | "unknown"
    status: str                 # online|away|busy|offline|unknown
    account: str
    checked: datetime           # UTC
    links: dict[str, str] = field(default_factory=dict)  # recipient (as given) -> chat URL




def _clean_link(url: Any) -> str | None:
    # Printable ASCII, no spaces or characters that could break out of `chat=<...>`.
    if not isinstance(url, str) or not 0 < len(url) <= LINK_MAX_CHARS:
        return None
    if not all(0x21 <= ord(c) <= 0x7E for c in url) or any(c in url for c in '<>"\\'):
        return None
    return url


def _printable(value: Any) -> str:
    """A header value fit for a log line: no control characters, bounded length."""
    if isinstance(value, str) and value.isprintable() and len(value) <= 320:
        return value
    return repr(value)[:320]


def _parse_checked(value: Any, fallback: datetime) -> datetime:
    if isinstance(value, str) and len(value) <= 64:
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            return fallback
        if t.tzinfo is not None:
            return t.astimezone(UTC)
    return fallback


class PresenceLookup:
    """One per process (or per filter): holds the DNS cache and the HTTP pool."""

    def __init__(self, cfg: Config, *, resolver: Any = None,
                 session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        """`resolver`: a `Discoverer`, or a dnspython-style async resolver for one;
        `session`: an aiohttp session to use (not closed by `close`);
        `clock`: seconds since the epoch (default time.time), also drives DNS TTLs."""
        self._timeout = cfg.filter.lookup_timeout
        self._clock = clock or time.time
        if isinstance(resolver, Discoverer):
            self.discoverer = resolver
        else:
            self.discoverer = Discoverer(cfg.dns, resolver=resolver,
                                         clock=clock or time.monotonic)
        self._requests = SiteRequests(self._timeout, cfg.filter.lookup_concurrency_per_domain,
                                      self._parse, session)
        self._inflight: dict[tuple[Any, ...], asyncio.Future[Answer]] = {}

    # --- public

    async def lookup(self, account: str, mail_id: str, recipients: list[str],
                     *, queue_id: str = "-") -> LookupResult:
        """Presence of `account` and a chat link per recipient; never raises."""
        who = _printable(account)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                return await self._lookup(account, mail_id, recipients, queue_id, started)
        except TimeoutError:
            log.info("%s: lookup of %s: no answer within %ss: unknown",
                     queue_id, who, self._timeout)
        except LookupFailed as e:
            log.info("%s: lookup of %s: %s: unknown", queue_id, who, e)
        except asyncio.CancelledError:
            raise
        except Exception as e:    # fail open: the mail goes on with `unknown`
            log.warning("%s: lookup of %s failed: %s: %s: unknown",
                        queue_id, who, type(e).__name__, e)
        return self._unknown(account)

    async def close(self) -> None:
        await self._requests.close()
        self._inflight.clear()

    def pending(self, domain: str) -> tuple[int, int]:
        """(requests in flight, lookups waiting) to `domain`'s service (for tests)."""
        return self._requests.pending(domain)

    # --- internals

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC).replace(microsecond=0)

    def _unknown(self, account: str) -> LookupResult:
        return LookupResult("unknown", "unknown", account, self._now(), {})

    async def _lookup(self, account: str, mail_id: str, recipients: list[str],
                      queue_id: str, started: float) -> LookupResult:
        acct = normalize_account(account) if isinstance(account, str) else None
        if acct is None or not isinstance(mail_id, str) or not is_well_formed(mail_id):
            raise LookupFailed("malformed account or Mail-ID")
        domain = account_domain(acct)
        found = await self.discoverer.discover(domain, timeout=self._timeout)
        if found.endpoint is None:
            raise LookupFailed(f"_mailtalk.{domain}: {found.error}")
        wanted = list(dict.fromkeys(r for r in recipients if isinstance(r, str) and r))
        chunks = [wanted[i:i + LOOKUP_MAX_RECIPIENTS]
                  for i in range(0, len(wanted), LOOKUP_MAX_RECIPIENTS)] or [[]]
        if len(chunks) == 1:           # the usual case: no task for gather to make
            answers = [await self._coalesced(found.endpoint, domain, acct, mail_id, chunks[0])]
        else:
            answers = list(await asyncio.gather(
                *(self._coalesced(found.endpoint, domain, acct, mail_id, c) for c in chunks)))
        status, checked, _ = answers[0]
        if status == "unknown":
            return LookupResult("unknown", "unknown", account, checked, {})
        links: dict[str, str] = {}
        for st, _, chunk_links in answers:
            if st != "unknown":
                links.update(chunk_links)
        log.debug("%s: lookup of %s: %s, %d of %d links in %.1f ms", queue_id, acct, status,
                  len(links), len(wanted), 1000 * (time.monotonic() - started))
        return LookupResult(STATE_OF_STATUS[status], status, account, checked, links)

    async def _coalesced(self, endpoint: Endpoint, domain: str, account: str, mail_id: str,
                         chunk: list[str]) -> Answer:
        # Identical lookups in flight share one answer. The shield keeps one caller's
        # timeout from cancelling the future the others wait for; the request itself
        # is bounded by the session timeout.
        key = (endpoint.api, account, mail_id, tuple(chunk))
        future = self._inflight.get(key)
        if future is None:
            future = self._requests.submit(
                domain, endpoint, {"account": account, "mail_id": mail_id, "recipients": chunk})
            self._inflight[key] = future
            future.add_done_callback(functools.partial(self._done, key))
        return await asyncio.shield(future)

    def _done(self, key: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
        if not future.cancelled():
            future.exception()       # retrieved: no "never retrieved" warning if all left

    def _parse(self, payload: Any, endpoint: Endpoint, chunk: list[str],
               url: str) -> Answer:
        if not isinstance(payload, dict) or payload.get("status") not in STATUSES:
            raise LookupFailed(f"{url}: answer has no valid status")
        checked = _parse_checked(payload.get("checked"), self._now())
        raw_links = payload.get("links") or {}
        if not isinstance(raw_links, dict):
            raise LookupFailed(f"{url}: links is not an object")
        asked = set(chunk)
        links: dict[str, str] = {}
        for rcpt, url_value in raw_links.items():
            link = _clean_link(url_value)
            if rcpt not in asked:
                continue                # never a link for someone we did not ask about
            if link is None or not endpoint.same_origin(link):
                log.warning("link for %s refused: not on %s's published origin %s",
                            rcpt, url, endpoint.api)
                continue
            links[rcpt] = link
        return payload["status"], checked, links
