"""The lookup client's HTTP side: requests to sender sites' presence services.

At most `cap` requests are in flight to one domain's service; a lookup is sent at
once while fewer are. Lookups that arrive while they all are, or in the same turn of
the event loop, wait and go together in the next request (POST /api/v1/lookups, up to
LOOKUP_BATCH_MAX): under load most lookups share a request, so the HTTP work per
lookup, on both sides, falls as the load grows. A site that answers 404 there (an
older version) is asked one lookup per request for an hour. Answers are capped at
LOOKUP_RESPONSE_MAX_BYTES a lookup; each is checked by the caller's `parse`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import yarl

from mailtalk import __version__
from mailtalk.constants import (API_LOOKUP, API_LOOKUPS, LOOKUP_BATCH_MAX,
                                LOOKUP_RESPONSE_MAX_BYTES)
from presence_api.discovery import Endpoint

log = logging.getLogger("mailtalk.lookup")

NO_BATCH_SECONDS = 3600.0      # after a 404 on the batch endpoint, ask one by one this long
NO_BATCH_MAX_SITES = 1024      # sites remembered so (a flood of them forgets all)
# Recipients in one batch request, at most: a body well under the 1 MiB that aiohttp
# servers accept by default, even with 320-character addresses.
BATCH_MAX_RECIPIENTS = 1000

Answer = tuple[str, datetime, dict[str, str]]     # status, checked, links of one lookup
# (the answer's JSON, the endpoint asked, the recipients asked, the URL) -> Answer
Parse = Callable[[Any, Endpoint, list[str], str], Answer]


class LookupFailed(Exception):
    """Why a lookup gave `unknown`: logged, never raised out of `lookup`."""


class _Requeue(Exception):
    """The service has no batch endpoint: ask the batch's lookups again, one by one."""


@dataclass
class _Pending:
    """One lookup request waiting for, or in, a request to its site."""
    body: dict[str, Any]        # {"account", "mail_id", "recipients"}
    future: asyncio.Future[Answer]


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


class SiteRequests:
    """The requests of one PresenceLookup: per site, a queue and a cap; one session."""

    def __init__(self, timeout: float, cap: int, parse: Parse,
                 session: aiohttp.ClientSession | None = None) -> None:
        """`session`: an aiohttp session to use (not closed by `close`)."""
        self._timeout = timeout
        self._cap = cap
        self._parse = parse
        self._session = session
        self._own_session = session is None
        self._sites: dict[tuple[str, str], _Site] = {}    # (domain, api) -> its requests
        self._tasks: set[asyncio.Task[None]] = set()         # requests being sent
        self._no_batch: dict[str, float] = {}               # api -> batch again after
        self._closed = False
        self._urls: dict[str, yarl.URL] = {}

    def submit(self, domain: str, endpoint: Endpoint, body: dict[str, Any]
               ) -> asyncio.Future[Answer]:
        """Queue one lookup ({"account", "mail_id", "recipients"}); its answer's future."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        site = self._sites.get((domain, endpoint.api))
        if site is None:
            site = self._sites[(domain, endpoint.api)] = _Site(endpoint)
        site.queue.append(_Pending(body, future))
        self._schedule_pump(domain, site)
        return future

    def pending(self, domain: str) -> tuple[int, int]:
        """(requests in flight, lookups waiting) to `domain`'s service."""
        sites = [v for (d, _), v in self._sites.items() if d == domain]
        return sum(v.in_flight for v in sites), sum(len(v.queue) for v in sites)

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
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

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
            n, recipients = 1, len(site.queue[0].body["recipients"])
            while n < min(batch_max, len(site.queue)):
                recipients += len(site.queue[n].body["recipients"])
                if recipients > BATCH_MAX_RECIPIENTS:
                    break
                n += 1
            batch, site.queue = site.queue[:n], site.queue[n:]
            site.in_flight += 1
            task = asyncio.ensure_future(self._send(domain, site, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if site.idle and self._sites.get((domain, site.endpoint.api)) is site:
            del self._sites[(domain, site.endpoint.api)]

    async def _send(self, domain: str, site: _Site, batch: list[_Pending]) -> None:
        answers: list[Answer | Exception] = []
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

    async def _post_one(self, endpoint: Endpoint, body: dict[str, Any]) -> Answer:
        url = endpoint.api + API_LOOKUP
        status, payload = await self._request(url, body, LOOKUP_RESPONSE_MAX_BYTES)
        if status != 200:
            raise LookupFailed(f"{url}: HTTP {status}")
        return self._parse(payload, endpoint, body["recipients"], url)

    async def _post_batch(self, site: _Site, batch: list[_Pending]
                          ) -> list[Answer | Exception]:
        endpoint = site.endpoint
        url = endpoint.api + API_LOOKUPS
        status, payload = await self._request(url, {"lookups": [p.body for p in batch]},
                                              LOOKUP_RESPONSE_MAX_BYTES * len(batch))
        if status in (404, 405):       # an older presence service: one by one, for a while
            log.info("%s: HTTP %d: asking one lookup per request for an hour", url, status)
            if len(self._no_batch) >= NO_BATCH_MAX_SITES:
                self._no_batch.clear()
            self._no_batch[endpoint.api] = time.monotonic() + NO_BATCH_SECONDS
            raise _Requeue()
        if status != 200:
            raise LookupFailed(f"{url}: HTTP {status}")
        answers = payload.get("answers") if isinstance(payload, dict) else None
        if not isinstance(answers, list) or len(answers) != len(batch):
            raise LookupFailed(f"{url}: answers do not match the lookups asked")
        out: list[Answer | Exception] = []
        for pending, answer in zip(batch, answers):
            try:
                out.append(self._parse(answer, endpoint, pending.body["recipients"], url))
            except LookupFailed as e:
                out.append(e)
        return out
