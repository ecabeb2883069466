"""What lookups read, kept in memory, and the shared reads of what is not.

A lookup is the presence service's hot path (one per delivered mail, from every
receiving MTA). It writes nothing (links are self-verifying, links.py), and reading
SQLite for it costs a hop to the store's worker thread, most of a lookup's time
(docs/benchmarks.md). So the store keeps:

- every account's presence mode (`modes`): all of them, so that a known and an
  unknown account cost the same dict lookup (a cache that missed on unknown accounts
  would tell them apart by time). Reloaded when another process (`mailtalk user`)
  changed the database;
- the state of recent mails (`mails`, bounded, oldest first out): the sender and the
  record's recipients, put here by `/api/v1/mails` when it stores a record, and the
  newest records loaded at start. So a Mail-ID issued after `complete_after` that is
  not in memory has no record: no read (records come only through this process's
  API; one presence process per database). `complete_after` is the start's cut-off
  and moves up with the issue time of every record evicted. An older Mail-ID is read
  once; "no record yet" is then kept only for `no_record_seconds`, since the record
  may still arrive (the outbox is asynchronous; a record stored here replaces it).

A wrong guess could only hand out a link to an address the record does not list, and
such a link does not open (links.py checks the record): the filter here is a courtesy,
not the guard.

Reads after a miss go through `Batcher`: the reads requested while the previous one
runs share the next, one thread hop and one SELECT for all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from mailtalk.mailid import MailIds
from presence_api.store import LookupContext, MailState

log = logging.getLogger("mailtalk.presence.store")

# issued_at reads the Mail-ID's clear header: no key is used.
_issued_at = MailIds(bytes(32), 1).issued_at
# A Mail-ID may be issued up to this long after its record's clock says (mailid.py
# accepts issue times 300 s ahead).
CLOCK_SKEW = 300.0

Req = TypeVar("Req")
Res = TypeVar("Res")


class LookupMemo:
    """Accounts' modes and recent mails' state. Loop thread only."""

    def __init__(self, max_mails: int, no_record_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_mails = max(1, max_mails)
        self.no_record_seconds = no_record_seconds
        self._clock = clock
        self.modes: dict[str, str] = {}
        # mail_id -> (state, kept until: monotonic seconds; 0.0 = while there is room)
        self.mails: dict[str, tuple[MailState, float]] = {}
        # Bumped by every record stored: a read that ran concurrently may have missed it,
        # so its result is not remembered.
        self.epoch = 0
        # Every record of a Mail-ID issued after this (unix seconds) is in `mails`.
        self.complete_after = float("inf")      # nothing known until load()

    def load(self, records: list[tuple[str, MailState]], oldest_left_out: float | None
             ) -> None:
        """At start: the newest records (newest first) and the creation time of the
        newest record that did not fit (None: all did)."""
        for mail_id, state in reversed(records[:self.max_mails]):
            self.mails[mail_id] = (state, 0.0)
        self.complete_after = 0.0 if oldest_left_out is None else oldest_left_out + CLOCK_SKEW

    def has_no_record(self, mail_id: str) -> bool:
        """True when the store surely holds no record of this mail (not in memory)."""
        issued = _issued_at(mail_id)
        return issued is not None and issued > self.complete_after

    def context(self, account: str, mail_id: str) -> LookupContext:
        entry = self.mails.get(mail_id)
        if entry is not None and entry[1] and entry[1] < self._clock():
            entry = None          # "no record yet" has aged: read again
        return LookupContext(self.modes.get(account), entry[0] if entry else None)

    def remember(self, mail_id: str, mail: MailState) -> None:
        """A recorded mail stays while there is room; one with no record only briefly."""
        until = 0.0 if mail.allowed is not None else self._clock() + self.no_record_seconds
        mails = self.mails
        mails.pop(mail_id, None)            # re-inserted: newest again
        mails[mail_id] = (mail, until)
        while len(mails) > self.max_mails:
            old = next(iter(mails))
            if mails.pop(old)[0].allowed is not None:      # a record leaves memory
                self.complete_after = max(self.complete_after, _issued_at(old) or 0.0)

    def recorded(self, mail_id: str, mail: MailState | None) -> None:
        """A record was stored (its state) or refused as already there (None: forget)."""
        self.epoch += 1
        if mail is None:
            self.mails.pop(mail_id, None)
        else:
            self.remember(mail_id, mail)


class Batcher(Generic[Req, Res]):
    """Runs requests in batches: `run_batch(list)` (one call in the store's thread)
    returns one result, or the exception that request raised, per request.

    No timer: a request made while no batch runs starts one at the loop's next turn
    (gathering the requests of this turn); requests made while a batch runs wait for
    it and go together in the next."""

    def __init__(self, run_batch: Callable[[list[Req]], Awaitable[list[Res | BaseException]]],
                 on_done: Callable[[list[Req], list[Res | BaseException], int], None]
                 ) -> None:
        self._run_batch = run_batch
        self._on_done = on_done          # (requests, results, epoch at start): loop side
        self._queue: list[tuple[Req, asyncio.Future[Res]]] = []
        self._task: asyncio.Task[None] | None = None
        self.epoch: Callable[[], int] = lambda: 0
        self.batches = 0                 # for tests and diagnostics
        self.largest = 0

    async def submit(self, req: Req) -> Res:
        fut: asyncio.Future[Res] = asyncio.get_running_loop().create_future()
        self._queue.append((req, fut))
        if self._task is None:
            self._task = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                reqs = [r for r, _ in batch]
                epoch = self.epoch()
                self.batches += 1
                self.largest = max(self.largest, len(batch))
                try:
                    results = await self._run_batch(reqs)
                except BaseException as e:      # the thread failed as a whole
                    results = [e] * len(reqs)
                    if isinstance(e, asyncio.CancelledError):
                        for _, fut in batch:
                            fut.cancel()
                        raise
                try:
                    self._on_done(reqs, results, epoch)
                except Exception:           # bookkeeping only: never strand the callers
                    log.exception("after a batch of %d", len(reqs))
                for (_, fut), res in zip(batch, results):
                    if fut.done():              # its caller went away (cancelled)
                        continue
                    if isinstance(res, BaseException):
                        fut.set_exception(res)
                    else:
                        fut.set_result(res)
        finally:
            self._task = None

    async def drain(self) -> None:
        """Wait until every submitted request is answered (before closing the store)."""
        while self._task is not None:
            await asyncio.shield(self._task)
