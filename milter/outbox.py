"""The durable outbox of sent-mail records, and the thread that hands them over.

The milter must not delay mail, so at end-of-message it only inserts the record
into a local SQLite file (WAL: one small append, no network). `Handover`, a
thread of its own, posts each record to this site's presence service
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
import http.client
import json
import logging
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mailtalk import sqlite
from mailtalk.constants import API_MAILS
from mailtalk.mailrecord import MailRecord

log = logging.getLogger("mailtalk.outbox")

# Tuning that is not worth a config key.
HTTP_TIMEOUT = 10.0          # seconds for one POST, connect included
FIRST_BACKOFF = 0.5          # seconds after the first failure; doubles up to retry_max
BATCH = 64                   # records read per round
RESPONSE_MAX_BYTES = 64 * 1024   # of an answer; a longer one is cut and the connection closed
ERROR_BODY_CHARS = 200       # of a refusal's body, in the log
EXPIRY_EVERY = 60.0          # seconds between sweeps for records past the Mail-ID lifetime
MIN_WAIT = 0.05              # seconds; floor of a wait for the next deferred record
CHECKPOINT_EVERY = 2.0       # seconds between WAL checkpoints (each one fsyncs)
# Mail first: after a new record the hand-over waits until no record came for
# YIELD_QUIET seconds (a burst of mail is over), but never longer than YIELD_MAX.
# On a small site the presence service shares the CPUs with Postfix; posting records
# in the middle of a burst took the benchmark from 0.73x to 0.39x of no milter.
YIELD_QUIET = 0.25
YIELD_MAX = 5.0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    mail_id  TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    created  REAL NOT NULL,
    next_try REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    record   TEXT NOT NULL
);
-- Due records in order of due time: one that keeps failing goes to the back, and
-- a large backlog after a long outage is read without sorting it every round.
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_try, id);
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
    thread reads and deletes; one connection, one lock."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        # Records hold mail text: owner only (mailtalk/sqlite.py). The connections are
        # opened here with settings of their own: libmilter's threads share one under
        # a lock, and no checkpoint runs inside an insert (below).
        sqlite.owner_only(path)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # No checkpoint (and its fsync) inside an insert at end-of-message: the
        # hand-over thread runs them (checkpoint()), outside the lock.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.executescript(_SCHEMA)
        self._checkpointer: sqlite3.Connection | None = None
        # Called after each insert (from libmilter's thread): wakes the hand-over.
        self.on_added: Callable[[], None] | None = None

    def add(self, record: MailRecord) -> None:
        data = json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._db.execute(
                "INSERT INTO outbox (mail_id, queue_id, created, record) "
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

    def delete_many(self, row_ids: list[int]) -> None:
        if not row_ids:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in row_ids])
            self._db.execute("COMMIT")

    def defer(self, row_id: int, next_try: float) -> None:
        with self._lock:
            self._db.execute("UPDATE outbox SET next_try = ?, attempts = attempts + 1 "
                             "WHERE id = ?", (next_try, row_id))

    def drop_older_than(self, created_before: float) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM outbox WHERE created < ?",
                                    (created_before,)).rowcount

    def oldest_age(self, now: float | None = None) -> float:
        """Seconds since the oldest record waiting was made (0: none waits)."""
        with self._lock:
            oldest = self._db.execute("SELECT min(created) FROM outbox").fetchone()[0]
        return max(0.0, (now or self._clock()) - oldest) if oldest is not None else 0.0

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def checkpoint(self) -> None:
        """Copy the WAL into the database file (PASSIVE: never blocks an insert).
        On a connection of its own, so that the lock is not held meanwhile."""
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self.path, check_same_thread=False,
                                                 isolation_level=None, timeout=5.0)
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        with self._lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._db.close()


DELIVERED, DROP, RETRY = "delivered", "drop", "retry"


def classify(status: int) -> str:
    if status in (200, 201):
        return DELIVERED
    if 400 <= status < 500 and status not in (408, 429):
        return DROP
    return RETRY


class Handover:
    """Posts outbox records to the presence service, from a thread of its own.

    A thread with the stdlib's keep-alive HTTP client, not an asyncio task with
    aiohttp: it shares the process (and the GIL) with libmilter's callbacks, and
    the milter's CPU per mail fell from 1.5 to 1.05 ms with it (bench/milter_bench.py).
    Records go one after the other on one connection; the first failure ends the
    round (the service is down: no point trying the rest now).
    """

    def __init__(self, outbox: Outbox, base_url: str, token: str, retry_max: float,
                 max_age: float, clock: Callable[[], float] = time.time) -> None:
        self._outbox = outbox
        url = urlsplit(base_url)
        self._https = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._https else 80)
        self._path = url.path.rstrip("/") + API_MAILS
        self._headers = {"Authorization": f"Bearer {token}",
                         "Content-Type": "application/json; charset=utf-8"}
        self._retry_max = retry_max
        self._max_age = max_age             # a record older than its Mail-ID is useless
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._backoff = 0.0                 # current pause after failures; 0: none
        self._last_expiry = 0.0
        self._last_checkpoint = 0.0
        self._last_added = 0.0
        self.delivered = 0                  # counters for tests and the benchmark
        self.dropped = 0

    def wake_threadsafe(self) -> None:
        """From any thread: there is a new record."""
        self._last_added = time.monotonic()
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mailtalk-outbox", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, HTTP_TIMEOUT + 1)
        self._disconnect()

    def _next_backoff(self) -> float:
        self._backoff = min(max(self._backoff * 2, FIRST_BACKOFF), self._retry_max)
        return self._backoff

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()              # before reading: no insert goes unseen
            self._yield_to_mail()
            try:
                pause = self._round()
                while pause == 0 and not self._stopping.is_set():
                    pause = self._round()   # once started, drain all that is due
            except Exception:               # a bug or a broken file: log, keep going
                log.exception("outbox: hand-over round failed")
                pause = self._next_backoff()
            if self._backoff:               # the service failed: new records wait too
                self._stopping.wait(pause)
            elif pause is None or pause > 0:
                self._wake.wait(pause)

    def _yield_to_mail(self) -> None:
        start = time.monotonic()
        while not self._stopping.is_set():
            now = time.monotonic()
            quiet = now - self._last_added
            if quiet >= YIELD_QUIET or now - start >= YIELD_MAX:
                return
            self._stopping.wait(min(YIELD_QUIET - quiet, YIELD_MAX - (now - start)))

    def _round(self) -> float | None:
        """Hands over what is due. Returns how long to wait (None: until woken)."""
        now = self._clock()
        if now - self._last_expiry > EXPIRY_EVERY:
            self._last_expiry = now
            old = self._outbox.drop_older_than(now - self._max_age)
            if old:
                log.warning("outbox: dropped %d record(s) older than the Mail-ID lifetime",
                            old)
        batch = self._outbox.due(now)
        if not batch:
            nxt = self._outbox.next_due()
            return None if nxt is None else max(MIN_WAIT, nxt - now)
        done: list[int] = []
        failed = False
        try:
            for p in batch:
                if self._stopping.is_set():
                    break
                if not self._send(p):
                    failed = True
                    break
                done.append(p.id)
        finally:
            self._outbox.delete_many(done)  # one transaction for the whole round
            if now - self._last_checkpoint > CHECKPOINT_EVERY:
                self._last_checkpoint = now
                self._outbox.checkpoint()
        if not failed:
            if self._backoff:
                log.info("outbox: presence service reachable again")
            self._backoff = 0.0
            return 0
        return self._next_backoff()

    def _send(self, p: Pending) -> bool:
        """One record: True when it is done with (stored or refused for good)."""
        status, text = self._post(p.record.encode("utf-8"))
        verdict = RETRY if status is None else classify(status)
        if verdict == DELIVERED:
            self.delivered += 1
            log.debug("%s: outbox: record %s handed over (%d)", p.queue_id, p.mail_id, status)
            return True
        if verdict == DROP:
            self.dropped += 1
            log.error("%s: outbox: presence service refused record %s with %d, dropped: %s",
                      p.queue_id, p.mail_id, status, text[:ERROR_BODY_CHARS])
            return True
        delay = min(FIRST_BACKOFF * 2 ** min(p.attempts, 20), self._retry_max)
        self._outbox.defer(p.id, self._clock() + delay)
        # One warning when the service goes away, not one per record.
        level = logging.WARNING if not self._backoff else logging.DEBUG
        log.log(level, "%s: outbox: cannot hand over record %s (%s); retrying, at most "
                "every %.0fs", p.queue_id, p.mail_id, text, self._retry_max)
        return False

    def _post(self, body: bytes) -> tuple[int | None, str]:
        """POST one record: (status, body text), or (None, why) on a transport error.
        A kept-alive connection the server has closed meanwhile is retried once."""
        for attempt in (1, 2):
            reused = self._conn is not None
            try:
                conn = self._connect()
                conn.request("POST", self._path, body=body, headers=self._headers)
                resp = conn.getresponse()
                data = resp.read(RESPONSE_MAX_BYTES + 1)
                if len(data) > RESPONSE_MAX_BYTES or resp.will_close:
                    self._disconnect()
                return resp.status, data.decode("utf-8", "replace")
            except (OSError, http.client.HTTPException) as e:
                self._disconnect()
                if not (reused and attempt == 1):
                    return None, f"{type(e).__name__}: {e}"
        return None, "unreachable"          # pragma: no cover (the loop returns)

    def _connect(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=HTTP_TIMEOUT,
                    context=ssl.create_default_context())
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port,
                                                        timeout=HTTP_TIMEOUT)
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
