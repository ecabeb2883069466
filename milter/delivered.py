"""The content filter's durable record of partial deliveries (`filter-delivered.sqlite3`).

The filter re-injects a mail whose recipients need different X-Sender-Online headers in
several transactions, one per group. When group 1 was accepted and group 2 then fails,
the filter answers Postfix 4xx and Postfix later retries the whole mail: the recipients
of group 1 must then be skipped, or they get the mail twice. This module remembers
them (Postfix queue ID, recipient, SHA-256 of the raw message as received) in a small
SQLite file under `[site] state_dir`, so that a restart of the filter between the
deferral and Postfix's retry forgets nothing.

Cost on the hot path: none. Almost every mail goes out in one transaction and never
needs the record, so
- a row is written only when a deferral follows at least one accepted group (rare),
  before the filter answers the 4xx;
- the file is read only for a queue ID known to have rows: `may_have()` is a lookup
  in an in-memory dict of those queue IDs (loaded at start-up, bounded);
- the file is created at the first write: a filter that never defers a partial
  delivery never makes one, and its start-up needs no writable state directory.

Every SQLite call runs in one worker thread of this store (the connection lives there),
so a slow disk (the write is `synchronous=FULL`: it is fsynced, to survive a power
loss too) never stalls the event loop; the caller waits for it with a bound.

Errors never cost a mail: any error of the file (unwritable, corrupt, locked, full
disk) is logged with the queue ID and the store carries on in memory: what this
process recorded is still remembered until it stops (the worst case is a duplicate
after a restart, never a loss). A file that is not an SQLite database (or a corrupt
one) is moved aside as `filter-delivered.sqlite3.corrupt` with its -wal/-shm, and a
new one is started.

A retry that is deferred again writes its skipped recipients once more, so an entry
lives `TTL` (3 days) after the last deferral of its mail: Postfix retries a deferred
mail at least every `maximal_backoff_time` (4000 s by default). At most `MAX_ENTRIES`
recipients are kept; entries past the TTL, then the oldest beyond the bound, are
pruned when the file is opened and after every write (writes are rare, the index on
the time makes it cheap).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailtalk import sqlite

log = logging.getLogger("mailtalk.filter")

FILE_NAME = "filter-delivered.sqlite3"     # under [site] state_dir
TTL = 3 * 86400              # seconds a partial delivery is remembered
MAX_ENTRIES = 100_000        # recipients remembered, at most (file and memory alike)
IO_TIMEOUT = 5.0             # seconds the filter waits for the file before going on

_SCHEMA = """
CREATE TABLE IF NOT EXISTS delivered (
    queue_id TEXT NOT NULL,
    digest   BLOB NOT NULL,
    rcpt     TEXT NOT NULL,
    at       REAL NOT NULL,
    PRIMARY KEY (queue_id, digest, rcpt)
);
CREATE INDEX IF NOT EXISTS delivered_at ON delivered (at);
"""

Key = tuple[str, bytes, str]        # queue ID, digest, recipient


class DeliveredStore:
    """Recipients already re-injected, per queue ID and message digest.

    `path` None: memory only (as the filter was before this file existed).
    Use from one event loop: `open()` at start-up, then `may_have()`, `delivered()`,
    `record()`, and `close()` at the end. No method raises on an error of the file.
    """

    def __init__(self, path: Path | None, *, ttl: float = TTL,
                 max_entries: int = MAX_ENTRIES,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.ttl, self.max_entries, self._clock = ttl, max_entries, clock
        # Queue IDs with a record, newest last -> time of their newest record.
        self._qids: dict[str, float] = {}
        # What this process recorded, newest last: answers without the file, and the
        # fallback when the file fails.
        self._mem: dict[Key, float] = {}
        self._db: sqlite3.Connection | None = None      # used in the worker thread only
        self._memory_only = path is None   # no file, or closed
        self._pool = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="filter-delivered")
                      if path is not None else None)

    # --- the event loop's side

    async def open(self) -> None:
        """At start-up: an existing file is pruned and its queue IDs loaded. No file:
        nothing to do (it is made at the first record)."""
        try:
            if self.path is None or not self.path.exists():
                return
            qids = await self._in_thread(self._load)
        except Exception as e:      # noqa: BLE001 - the filter runs without it
            self._fail("-", "cannot open", e)
            return
        for qid, at in qids:
            self._remember_qid(qid, at)
        if qids:
            log.info("%d queue ID(s) with recipients delivered before a deferral, from %s",
                     len(qids), self.path)

    def may_have(self, qid: str) -> bool:
        """Cheap: is there any record for this queue ID? (No file access.)"""
        at = self._qids.get(qid)
        return at is not None and self._clock() - at < self.ttl

    async def delivered(self, qid: str, digest: bytes, rcpts: Iterable[str]) -> set[str]:
        """Those of `rcpts` already re-injected for this queue ID and message."""
        if not self.may_have(qid):
            return set()
        now = self._clock()
        wanted = list(dict.fromkeys(rcpts))
        hits = {r for r in wanted if self._in_mem((qid, digest, r), now)}
        rest = [r for r in wanted if r not in hits]
        if rest and not self._memory_only:
            try:
                hits |= await self._in_thread(self._read, qid, digest, rest, now - self.ttl)
            except Exception as e:      # noqa: BLE001 - worst case: a duplicate
                self._fail(qid, "cannot read", e)
        return hits

    async def record(self, qid: str, digest: bytes, rcpts: Iterable[str]) -> None:
        """Remember that `rcpts` were re-injected (call before answering the 4xx)."""
        now = self._clock()
        rcpts = list(dict.fromkeys(rcpts))
        if not rcpts:
            return
        for r in rcpts:
            self._remember_mem((qid, digest, r), now)
        self._remember_qid(qid, now)
        if self._memory_only:
            log.warning("%s: %d recipient(s) delivered before the deferral are remembered "
                        "in memory only (no file): a restart forgets them", qid, len(rcpts))
            return
        try:
            await self._in_thread(self._write, qid, digest, rcpts, now)
        except Exception as e:      # noqa: BLE001 - memory still has them
            self._fail(qid, "cannot write", e)

    async def close(self) -> None:
        if self._pool is None:
            return
        try:
            await self._in_thread(self._close)
        except Exception as e:      # noqa: BLE001
            log.warning("%s: cannot close: %s", self.path, e)
        self._pool.shutdown(wait=False)
        self._pool = None
        self._memory_only = True

    async def _in_thread(self, fn: Callable[..., object], *args: object) -> object:
        """Run `fn` in the store's thread; wait at most IO_TIMEOUT (it goes on then).

        Shielded: a cancelled caller (Postfix hung up) does not cancel a write that is
        queued or running."""
        if self._pool is None:
            raise RuntimeError("store closed")
        fut = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), IO_TIMEOUT)
        except TimeoutError:
            raise TimeoutError(f"no answer from the file within {IO_TIMEOUT:g} s") from None

    def _fail(self, qid: str, what: str, e: BaseException) -> None:
        log.error("%s: %s %s: %s: recipients delivered before a deferral are remembered "
                  "in memory only; a restart may deliver them twice",
                  qid, what, self.path, e)

    def _in_mem(self, key: Key, now: float) -> bool:
        at = self._mem.get(key)
        return at is not None and now - at < self.ttl

    def _remember_qid(self, qid: str, at: float) -> None:
        self._qids.pop(qid, None)
        if len(self._qids) >= self.max_entries:
            self._qids = _bounded(self._qids, self._clock() - self.ttl, self.max_entries - 1)
        self._qids[qid] = at

    def _remember_mem(self, key: Key, at: float) -> None:
        self._mem.pop(key, None)
        if len(self._mem) >= self.max_entries:
            self._mem = _bounded(self._mem, self._clock() - self.ttl, self.max_entries - 1)
        self._mem[key] = at

    # --- the worker thread's side

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        db = sqlite.connect(self.path, synchronous="FULL")   # rare writes: fsync each one
        try:
            db.executescript(_SCHEMA)
            db.execute("SELECT COUNT(*) FROM delivered").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _open_db(self) -> sqlite3.Connection:
        """The connection; a file that is not a database is moved aside, once."""
        if self._db is not None:
            return self._db
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as e:
            if not getattr(e, "sqlite_errorname", "").startswith(("SQLITE_NOTADB",
                                                                  "SQLITE_CORRUPT")):
                raise
            assert self.path is not None
            aside = self.path.with_name(self.path.name + ".corrupt")
            for suffix in ("", "-wal", "-shm"):
                src = self.path.with_name(self.path.name + suffix)
                if src.exists():
                    os.replace(src, aside.with_name(aside.name + suffix))
            log.error("%s: %s: moved aside as %s; starting a new one", self.path, e, aside)
            self._db = self._connect()
        self._prune(self._db)
        return self._db

    def _load(self) -> list[tuple[str, float]]:
        db = self._open_db()
        return db.execute("SELECT queue_id, MAX(at) FROM delivered WHERE at >= ? "
                          "GROUP BY queue_id ORDER BY MAX(at) DESC LIMIT ?",
                          (self._clock() - self.ttl, self.max_entries)).fetchall()[::-1]

    def _read(self, qid: str, digest: bytes, rcpts: list[str], since: float) -> set[str]:
        db = self._open_db()
        found: set[str] = set()
        for i in range(0, len(rcpts), 500):        # below SQLite's variable limit
            part = rcpts[i:i + 500]
            found.update(r for (r,) in db.execute(
                "SELECT rcpt FROM delivered WHERE queue_id = ? AND digest = ? AND at >= ? "
                f"AND rcpt IN ({','.join('?' * len(part))})", (qid, digest, since, *part)))
        return found

    def _write(self, qid: str, digest: bytes, rcpts: list[str], now: float) -> None:
        db = self._open_db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO delivered (queue_id, digest, rcpt, at) "
                           "VALUES (?, ?, ?, ?)", [(qid, digest, r, now) for r in rcpts])
            self._prune(db)                 # in the same transaction: one fsync
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _prune(self, db: sqlite3.Connection) -> None:
        """Drop entries past the TTL, then the oldest beyond MAX_ENTRIES."""
        now = self._clock()
        db.execute("DELETE FROM delivered WHERE at < ?", (now - self.ttl,))
        (count,) = db.execute("SELECT COUNT(*) FROM delivered").fetchone()
        if count > self.max_entries:
            db.execute("DELETE FROM delivered WHERE rowid IN (SELECT rowid FROM delivered "
                       "ORDER BY at, rowid LIMIT ?)", (count - self.max_entries,))

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _bounded(d: dict, cutoff: float, keep: int) -> dict:
    """`d` (insertion-ordered, value = time) without entries before `cutoff`, and
    without its oldest entries beyond `keep`."""
    live = {k: t for k, t in d.items() if t >= cutoff}
    while len(live) > keep:
        live.pop(next(iter(live)))
    return live
