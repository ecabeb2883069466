"""The durable outbox of sent-mail records, and the task that hands them over.

The milter must not delay mail, so at end-of-message it only inserts the record
into a local SQLite file (WAL: one small append, no network). `Handover`, an
asyncio task, posts each record to this site's presence service
(`POST {presence_api}/api/v1/mails`, bearer token from the site key) and deletes
it once the service answered 200/201. The service is idempotent on `mail_id`, so a
record sent twice (say the process died between the answer and the delete) is
stored once: records written while the service is down or restarting arrive
exactly once after it is back.

Answers: 200/201 delivered; any other 4xx but 408/429 is a bad record: logged and
dropped (sending it again cannot help); everything else, and connection errors,
is retried with exponential backoff capped at `[milter] outbox_retry_max`.

Durability: `synchronous=NORMAL` in WAL mode survives a crash or kill of either
process; only a power loss can lose the last records (the mail itself is in
Postfix's queue; what is lost is the chat's view of its text).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from mailtalk.constants import API_MAILS
from mailtalk_milter.mailrecord import MailRecord

log = logging.getLogger("mailtalk.outbox")

# Tuning that is not worth a config key.
HTTP_TIMEOUT = 10.0          # seconds for one POST, connect included
FIRST_BACKOFF = 0.5          # seconds after the first failure; doubles up to retry_max
BATCH = 32                   # records read per round
PARALLEL = 4                 # POSTs in flight at once
ERROR_BODY_CHARS = 200       # of a refusal's body, in the log
EXPIRY_EVERY = 60.0          # seconds between sweeps for records past the Mail-ID lifetime
MIN_WAIT = 0.05              # seconds; floor of a wait for the next deferred record


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    mail_id  TEXT NOT NULL UNIQUE,
    queue_id TEXT NOT NULL,
    created  REAL NOT NULL,
    next_try REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    record   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_next_try ON outbox (next_try, id);
"""


@dataclass(frozen=True)
class Pending:
    id: int
    mail_id: str
    queue_id: str
    created: float
    attempts: int
    record: str                 # the JSON body, as stored


class Outbox:
    """The SQLite file. Thread-safe: libmilter's threads insert, the hand-over
    task (through asyncio.to_thread) reads and deletes; one connection, one lock."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Records hold mail text: the file (and SQLite's -wal/-shm, which copy
        # its mode) is for this user only.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # Called after each insert (from libmilter's thread): wakes the hand-over.
        self.on_added: Callable[[], None] | None = None

    def add(self, record: MailRecord) -> None:
        data = json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO outbox (mail_id, queue_id, created, record) "
                "VALUES (?, ?, ?, ?)", (record.mail_id, record.queue_id, self._clock(), data))
        if self.on_added is not None:
            self.on_added()

    def due(self, now: float, limit: int = BATCH) -> list[Pending]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, mail_id, queue_id, created, attempts, record FROM outbox "
                "WHERE next_try <= ? ORDER BY next_try, id LIMIT ?", (now, limit)).fetchall()
        return [Pending(*r) for r in rows]

    def next_due(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(next_try) FROM outbox").fetchone()
        return row[0] if row else None

    def delete(self, row_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def defer(self, row_id: int, next_try: float) -> None:
        with self._lock:
            self._db.execute("UPDATE outbox SET next_try = ?, attempts = attempts + 1 "
                             "WHERE id = ?", (next_try, row_id))

    def drop_older_than(self, created_before: float) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM outbox WHERE created < ?",
                                    (created_before,)).rowcount

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


DELIVERED, DROP, RETRY = "delivered", "drop", "retry"


def classify(status: int) -> str:
    if status in (200, 201):
        return DELIVERED
    if 400 <= status < 500 and status not in (408, 429):
        return DROP
    return RETRY


class Handover:
    """Posts outbox records to the presence service, in the background."""

    def __init__(self, outbox: Outbox, base_url: str, token: str, retry_max: float,
                 max_age: float, clock: Callable[[], float] = time.time) -> None:
        self._outbox = outbox
        self._url = base_url.rstrip("/") + API_MAILS
        self._headers = {"Authorization": f"Bearer {token}",
                         "Content-Type": "application/json; charset=utf-8"}
        self._retry_max = retry_max
        self._max_age = max_age             # a record older than its Mail-ID is useless
        self._clock = clock
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._backoff = 0.0                 # current pause after failures; 0: none
        self._last_expiry = 0.0
        self.delivered = 0                  # counters for tests and the benchmark
        self.dropped = 0

    def wake_threadsafe(self) -> None:
        """From any thread: there is a new record."""
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:                # loop closed: we are shutting down
            pass

    def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT))
        self._task = asyncio.create_task(self._run(), name="mailtalk-outbox")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._session is not None:
            await self._session.close()

    def _next_backoff(self) -> float:
        self._backoff = min(max(self._backoff * 2, FIRST_BACKOFF), self._retry_max)
        return self._backoff

    async def _run(self) -> None:
        while True:
            self._wake.clear()              # before reading: no insert goes unseen
            try:
                pause = await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:               # a bug or a broken file: log, keep going
                log.exception("outbox: hand-over round failed")
                pause = self._next_backoff()
            if self._backoff:               # the service failed: new records wait too
                await asyncio.sleep(pause or 0)
            elif pause is None or pause > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=pause)
                except TimeoutError:
                    pass

    async def _round(self) -> float | None:
        """Hands over what is due. Returns how long to wait (None: until woken)."""
        now = self._clock()
        if now - self._last_expiry > EXPIRY_EVERY:
            self._last_expiry = now
            old = await asyncio.to_thread(self._outbox.drop_older_than, now - self._max_age)
            if old:
                log.warning("outbox: dropped %d record(s) older than the Mail-ID lifetime",
                            old)
        batch = await asyncio.to_thread(self._outbox.due, now)
        if not batch:
            nxt = await asyncio.to_thread(self._outbox.next_due)
            return None if nxt is None else max(MIN_WAIT, nxt - now)
        sem = asyncio.Semaphore(PARALLEL)

        async def one(p: Pending) -> bool:
            async with sem:
                return await self._send(p)

        results = await asyncio.gather(*(one(p) for p in batch))
        if all(results):
            self._backoff = 0.0
            return 0
        return self._next_backoff()

    async def _send(self, p: Pending) -> bool:
        """One record. False when the service could not take it now (retry later)."""
        assert self._session is not None
        try:
            async with self._session.post(self._url, data=p.record.encode("utf-8"),
                                          headers=self._headers) as resp:
                status = resp.status
                body = "" if status < 300 else (await resp.text(errors="replace"))
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return await self._retry(p, f"{type(e).__name__}: {e}")
        verdict = classify(status)
        if verdict == DELIVERED:
            await asyncio.to_thread(self._outbox.delete, p.id)
            self.delivered += 1
            log.debug("%s: outbox: record %s handed over (%d)", p.queue_id, p.mail_id, status)
            return True
        if verdict == DROP:
            await asyncio.to_thread(self._outbox.delete, p.id)
            self.dropped += 1
            log.error("%s: outbox: presence service refused record %s with %d, dropped: %s",
                      p.queue_id, p.mail_id, status, body[:ERROR_BODY_CHARS])
            return True
        return await self._retry(p, f"HTTP {status}")

    async def _retry(self, p: Pending, why: str) -> bool:
        delay = min(FIRST_BACKOFF * 2 ** min(p.attempts, 20), self._retry_max)
        await asyncio.to_thread(self._outbox.defer, p.id, self._clock() + delay)
        level = logging.WARNING if p.attempts == 0 else logging.DEBUG
        log.log(level, "%s: outbox: cannot hand over record %s (%s); retry in %.1fs",
                p.queue_id, p.mail_id, why, delay)
        return False
