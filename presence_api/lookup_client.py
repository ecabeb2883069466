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

Batching: a lookup is sent at once while fewer than that many requests to its domain
are in flight. Lookups that arrive while they all are, or in the same turn of the
event loop, wait for the next request and go in it together (POST /api/v1/lookups, up
to `LOOKUP_BATCH_MAX`). Under load most lookups then share a request: the HTTP work
per lookup, on both sides, falls with the load instead of growing with it. A site that
answers 404 there (an older version) is asked one lookup per request for an hour.

A recipient without a link in `links` (its link was refused, or the service gave
none) gets no `chat=`; MISSION.md's grammar then calls for `unknown` for that one.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from collections.abc import Callable
from typing import Any

import aiohttp
import yarl

from mailtalk import __version__
from mailtalk.accounts import account_domain, normalize_account
from mailtalk.config import Config
from mailtalk.constants import (API_LOOKUP, API_LOOKUPS, LOOKUP_BATCH_MAX,
                                LOOKUP_MAX_RECIPIENTS, LOOKUP_RESPONSE_MAX_BYTES)
from mailtalk.mailid import is_well_formed
from presence_api.discovery import Discoverer, Endpoint

log = logging.getLogger("mailtalk.lookup")

STATUSES = ("online", "away", "busy", "offline", "unknown")
# MISSION.md: yes for online, away and busy (the sender is there), no for offline.
STATE_OF_STATUS = {"online": "yes", "away": "yes", "busy": "yes", "offline": "no",
                   "unknown": "unknown"}
LINK_MAX_CHARS = 2048
NO_BATCH_SECONDS = 3600.0      # after a 404 on the batch endpoint, ask one by one this long


@dataclass(frozen=True)
class LookupResult:
    state: str                  # "yes" | "no" | "unknown"
    status: str                 # online|away|busy|offline|unknown
    account: str
    checked: datetime           # UTC
    links: dict[str, str] = field(default_factory=dict)  # recipient (as given) -> chat URL


_Answer = tuple[str, datetime, dict[str, str]]     # status, checked, links of one request


class LookupFailed(Exception):
    """Why a lookup gave `unknown`: logged, never raised out of `lookup`."""


class _Requeue(Exception):
    """The service has no batch endpoint: ask the batch's lookups again, one by one."""


@dataclass
class _Pending:
    """One lookup request waiting for, or in, a request to its site."""
    body: dict[str, Any]        # {"account", "mail_id", "recipients"}
    future: asyncio.Future[_Answer]


@dataclass
class _Site:
    """Requests to one domain's presence service (one published endpoint)."""
    endpoint: Endpoint
    queue: list[_Pending] = field(default_factory=list)
    in_flight: int = 0          # requests
    pump_scheduled: bool = False

    @property
    def idle(self) -> bool:
        return not self.queue and not self.in_flight and not self.pump_scheduled


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
        self._cap = cfg.filter.lookup_concurrency_per_domain
        self._clock = clock or time.time
        if isinstance(resolver, Discoverer):
            self.discoverer = resolver
        else:
            self.discoverer = Discoverer(cfg.dns, resolver=resolver,
                                         clock=clock or time.monotonic)
        self._session = session
        self._own_session = session is None
        self._sites: dict[tuple[str, str], _Site] = {}    # (domain, api) -> its requests
        self._inflight: dict[tuple[Any, ...], asyncio.Future[_Answer]] = {}
        self._tasks: set[asyncio.Task[None]] = set()         # requests being sent
        self._no_batch: dict[str, float] = {}               # api -> batch again after
        self._closed = False
        self._urls: dict[str, yarl.URL] = {}

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
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for site in self._sites.values():
            for pending in site.queue:
                if not pending.future.done():
                    pending.future.set_exception(LookupFailed("lookup client closed"))
        self._sites.clear()
        self._inflight.clear()
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    def pending(self, domain: str) -> tuple[int, int]:
        """(requests in flight, lookups waiting) to `domain`'s service (for tests)."""
        sites = [v for (d, _), v in self._sites.items() if d == domain]
        return sum(v.in_flight for v in sites), sum(len(v.queue) for v in sites)

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
                         chunk: list[str]) -> _Answer:
        # Identical lookups in flight share one answer. The shield keeps one caller's
        # timeout from cancelling the future the others wait for; the request itself
        # is bounded by the session timeout.
        key = (endpoint.api, account, mail_id, tuple(chunk))
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._inflight[key] = future
            future.add_done_callback(functools.partial(self._done, key))
            site = self._sites.get((domain, endpoint.api))
            if site is None:
                site = self._sites[(domain, endpoint.api)] = _Site(endpoint)
            site.queue.append(_Pending(
                {"account": account, "mail_id": mail_id, "recipients": chunk}, future))
            self._schedule_pump(domain, site)
        return await asyncio.shield(future)

    def _done(self, key: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
        if not future.cancelled():
            future.exception()       # retrieved: no "never retrieved" warning if all left

    def _schedule_pump(self, domain: str, site: _Site) -> None:
        # At the end of this turn of the loop: lookups made in the same turn go together.
        if not site.pump_scheduled:
            site.pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump, domain, site)

    def _pump(self, domain: str, site: _Site) -> None:
        """Start requests for waiting lookups, while fewer than the cap are in flight."""
        site.pump_scheduled = False
        if self._closed:
            return
        batch_max = 1 if self._no_batch.get(site.endpoint.api, 0) > time.monotonic() \
            else LOOKUP_BATCH_MAX
        while site.queue and site.in_flight < self._cap:
            batch, site.queue = site.queue[:batch_max], site.queue[batch_max:]
            site.in_flight += 1
            task = asyncio.ensure_future(self._send(domain, site, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if site.idle and self._sites.get((domain, site.endpoint.api)) is site:
            del self._sites[(domain, site.endpoint.api)]

    async def _send(self, domain: str, site: _Site, batch: list[_Pending]) -> None:
        answers: list[_Answer | Exception] = []
        try:
            if len(batch) == 1:
                answers = [await self._post_one(site.endpoint, batch[0].body)]
            else:
                answers = await self._post_batch(site, batch)
                log.debug("%s: %d lookups in one request", site.endpoint.api, len(batch))
        except _Requeue:               # asked again, one by one, in their turn
            site.queue[:0] = [p for p in batch if not p.future.done()]
        except asyncio.CancelledError:  # closing
            answers = [LookupFailed("lookup client closed")] * len(batch)
            raise
        except Exception as e:         # the request as a whole: every lookup in it
            answers = [e] * len(batch)
        finally:
            site.in_flight -= 1
            for pending, answer in zip(batch, answers):
                if pending.future.done():
                    continue
                if isinstance(answer, Exception):
                    pending.future.set_exception(answer)
                else:
                    pending.future.set_result(answer)
            self._pump(domain, site)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=256, limit_per_host=self._cap,
                                             ttl_dns_cache=300)
            # No cookies (a lookup carries no state), a fixed header set, and answers as
            # they are (a compressed one would not parse: unknown): less per request.
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=self._timeout), auto_decompress=False,
                headers={"User-Agent": f"mailtalk/{__version__}",
                         "Content-Type": "application/json", "Accept-Encoding": "identity"})
        return self._session

    def _url(self, url: str) -> yarl.URL:
        """The parsed URL, kept (a handful of endpoints: parsing it is per-request work)."""
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= 1024:
                self._urls.clear()
            parsed = self._urls[url] = yarl.URL(url)
        return parsed

    async def _request(self, url: str, body: dict[str, Any], cap: int) -> tuple[int, Any]:
        """POST body; (HTTP status, the JSON answer or None), the answer capped at `cap`."""
        session = self._get_session()
        async with session.post(self._url(url), data=json.dumps(body).encode(),
                                allow_redirects=False) as resp:
            if resp.status != 200:
                return resp.status, None
            too_big = f"{url}: answer larger than {cap} bytes"
            length = resp.content_length
            if length is not None and length > cap:
                raise LookupFailed(too_big)
            if length is not None:         # the usual case: read exactly that much
                data = await resp.content.readexactly(length)
            else:                          # chunked: count as it comes
                data = bytearray()
                async for part in resp.content.iter_chunked(16384):
                    data += part
                    if len(data) > cap:
                        raise LookupFailed(too_big)
        try:
            return 200, json.loads(bytes(data))
        except ValueError:
            raise LookupFailed(f"{url}: answer is not JSON") from None

    async def _post_one(self, endpoint: Endpoint, body: dict[str, Any]) -> _Answer:
        url = endpoint.api + API_LOOKUP
        status, payload = await self._request(url, body, LOOKUP_RESPONSE_MAX_BYTES)
        if status != 200:
            raise LookupFailed(f"{url}: HTTP {status}")
        return self._parse(payload, endpoint, body["recipients"], url)

    async def _post_batch(self, site: _Site, batch: list[_Pending]
                          ) -> list[_Answer | Exception]:
        endpoint = site.endpoint
        url = endpoint.api + API_LOOKUPS
        status, payload = await self._request(url, {"lookups": [p.body for p in batch]},
                                              LOOKUP_RESPONSE_MAX_BYTES * len(batch))
        if status in (404, 405):       # an older presence service: one by one, for a while
            log.info("%s: HTTP %d: asking one lookup per request for an hour", url, status)
            self._no_batch[endpoint.api] = time.monotonic() + NO_BATCH_SECONDS
            raise _Requeue()
        if status != 200:
            raise LookupFailed(f"{url}: HTTP {status}")
        answers = payload.get("answers") if isinstance(payload, dict) else None
        if not isinstance(answers, list) or len(answers) != len(batch):
            raise LookupFailed(f"{url}: answers do not match the lookups asked")
        out: list[_Answer | Exception] = []
        for pending, answer in zip(batch, answers):
            try:
                out.append(self._parse(answer, endpoint, pending.body["recipients"], url))
            except LookupFailed as e:
                out.append(e)
        return out

    def _parse(self, payload: Any, endpoint: Endpoint, chunk: list[str],
               url: str) -> _Answer:
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
