"""What lookups read, kept in memory, and the group commit of what they write.

A lookup is the presence service's hot path (one per delivered mail, from every
receiving MTA). Reading SQLite for it costs a hop to the store's worker thread and
three SELECTs, most of the lookup's time (docs/benchmarks.md). So the store keeps:

- every account's presence mode (`modes`): all of them, so that a known and an
  unknown account cost the same dict lookup (a cache that missed on unknown accounts
  would tell them apart by time). Reloaded when another process (`mailtalk user`)
  changed the database;
- the lookup state of recently bound or looked-up mails (`mails`, bounded, oldest
  first out): the sender, the record's recipients and which links exist. Link tokens
  are deterministic HMACs, so a known (mail, recipient) needs no read at all.

Writes (binding a mail and its links) go through `GroupCommit`: the binds requested
while the previous transaction runs share the next one, one thread hop and one commit
for all; each caller gets its answer only after that commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from presence_api.store import BoundMail, LookupContext

log = logging.getLogger("mailtalk.presence.store")

Req = TypeVar("Req")
Res = TypeVar("Res")


class LookupMemo:
    """Accounts' modes and recent mails' lookup state. Loop thread only."""

    def __init__(self, max_mails: int) -> None:
        self.max_mails = max(1, max_mails)
        self.modes: dict[str, str] = {}
        self.mails: dict[str, BoundMail] = {}
        # Bumped by every record that changes a mail: a bind that ran concurrently may
        # have read the mail before the record, so its result is not remembered.
        self.epoch = 0

    def context(self, account: str, mail_id: str) -> LookupContext:
        return LookupContext(self.modes.get(account), self.mails.get(mail_id))

    def remember(self, mail_id: str, mail: BoundMail) -> None:
        mails = self.mails
        mails.pop(mail_id, None)            # re-inserted: newest again
        mails[mail_id] = mail
        while len(mails) > self.max_mails:
            del mails[next(iter(mails))]

    def forget(self, mail_id: str) -> None:
        self.epoch += 1
        self.mails.pop(mail_id, None)


class GroupCommit(Generic[Req, Res]):
    """Runs requests in batches: `run_batch(list)` (one transaction in the store's
    thread) returns one result, or the exception that request raised, per request.

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
                    log.exception("after a group commit of %d", len(reqs))
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
        """Wait until every submitted request is committed (before closing the store)."""
        while self._task is not None:
            await asyncio.shield(self._task)
