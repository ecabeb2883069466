"""The digest tables of the SQLite store (store.Store's digest methods; digest.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class SqliteDigests:
    db: sqlite3.Connection

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError

    async def quiet_rooms(self, quiet_before: float, since: float) -> list[tuple[str, int]]:
        return await self._run(lambda: [(r[0], r[1]) for r in self.db.execute(
            "SELECT m.mail_id, max(m.id) FROM messages m JOIN mails ON mails.mail_id = m.mail_id "
            "WHERE mails.recorded = 1 AND m.mail_id IN (SELECT DISTINCT mail_id FROM messages "
            "WHERE ts > ?) GROUP BY m.mail_id HAVING max(m.ts) <= ?", (since, quiet_before))])

    async def digest_marks(self, mail_id: str) -> tuple[dict[str, int], dict[str, int]]:
        def do() -> tuple[dict[str, int], dict[str, int]]:
            reads: dict[str, int] = {}
            for address, last in self.db.execute(
                    "SELECT address, last_read FROM reads WHERE mail_id=?", (mail_id,)):
                reads[address.lower()] = max(last, reads.get(address.lower(), 0))
            done = {a.lower(): up for a, up in self.db.execute(
                "SELECT address, up_to FROM digests WHERE mail_id=? AND sent=1", (mail_id,))}
            return reads, done
        return await self._run(do)

    async def claim_digest(self, mail_id: str, address: str, up_to: int, now: float,
                           retry_before: float) -> bool:
        return await self._run(lambda: self.db.execute(
            "INSERT INTO digests (mail_id, address, up_to, claimed_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (mail_id, address) DO UPDATE SET up_to=excluded.up_to, "
            "claimed_at=excluded.claimed_at, sent=0 WHERE digests.up_to < excluded.up_to "
            "OR (digests.sent = 0 AND digests.claimed_at < ?)",
            (mail_id, address.lower(), up_to, now, retry_before)).rowcount == 1)

    async def digest_sent(self, mail_id: str, address: str, up_to: int) -> None:
        await self._run(lambda: self.db.execute(
            "UPDATE digests SET sent=1 WHERE mail_id=? AND address=? AND up_to=?",
            (mail_id, address.lower(), up_to)))

    async def set_digests(self, address: str, on: bool) -> None:
        sql = ("DELETE FROM digests_off WHERE address=?" if on else
               "INSERT OR IGNORE INTO digests_off VALUES (?)")
        await self._run(lambda: self.db.execute(sql, (address.lower(),)))

    async def digests_off(self, addresses: list[str]) -> set[str]:
        wanted = [a.lower() for a in addresses]
        return await self._run(lambda: {r[0] for r in self.db.execute(
            f"SELECT address FROM digests_off WHERE address IN "
            f"({','.join('?' * len(wanted))})", wanted)} if wanted else set())
