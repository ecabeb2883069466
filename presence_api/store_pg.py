"""PostgreSQL back end of `store.Store` (`[presence] database = "postgresql://..."`),
with asyncpg's connection pool: the same methods and meaning as store_sqlite.py.

The schema is created and migrated at `open()` from PG_MIGRATIONS, under an advisory
lock so that processes starting together migrate once. PostgreSQL's text cannot hold
NUL: a NUL in a mail's text or a message becomes U+FFFD here, never an error (an
error would keep the milter's outbox retrying the record forever). `data_version` is
a counter that every account change bumps, for the lookup memo of every process.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import asyncpg

from presence_api.store import (Account, Conversation, Mail, MailState, Message,
                                StoreUnavailable)
from presence_api.store_pg_schema import MIGRATE_LOCK, PG_MIGRATIONS

log = logging.getLogger("mailtalk.presence.store")

POOL_MAX = 10
CONNECT_TIMEOUT = 10.0


def _clean(text: str) -> str:
    return text.replace("\x00", "\ufffd")


def _mail(r: Any) -> Mail:
    return Mail(mail_id=r["mail_id"], account=r["account"], recorded=r["recorded"],
                message_id=r["message_id"], subject=r["subject"], date=r["date"],
                recipients=tuple(json.loads(r["recipients"])), body_text=r["body_text"],
                queue_id=r["queue_id"], created_at=r["created_at"],
                names=json.loads(r["names"]))


def _state(r: Any) -> MailState:
    allowed = (frozenset(x.lower() for x in json.loads(r["recipients"]))
               if r["recorded"] else None)
    return MailState(r["account"], allowed, r["message_id"] or "" if r["recorded"] else "")


def _account(r: Any) -> Account:
    return Account(r["account"], r["password_hash"], r["mode"], r["created_at"])


def _message(r: Any) -> Message:
    return Message(r["id"], r["mail_id"], r["author"], r["text"], r["ts"])


class PgStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "store not open"
        return self._pool

    async def open(self) -> None:
        try:
            self._pool = await asyncio.wait_for(
                asyncpg.create_pool(self.url, min_size=1, max_size=POOL_MAX), CONNECT_TIMEOUT)
        except (OSError, TimeoutError, asyncpg.PostgresError, ValueError) as e:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {type(e).__name__}: {e}"
                                   ) from None
        async with self.pool.acquire() as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
            current = await db.fetchval("SELECT version FROM schema_version") or 0
            if current > len(PG_MIGRATIONS):
                raise RuntimeError(f"database schema version {current} is newer than this "
                                   f"mailtalk knows ({len(PG_MIGRATIONS)})")
            for version in range(current + 1, len(PG_MIGRATIONS) + 1):
                log.info("PostgreSQL: migrating schema to version %d", version)
                await db.execute(PG_MIGRATIONS[version - 1])
                await db.execute("DELETE FROM schema_version")
                await db.execute("INSERT INTO schema_version VALUES ($1)", version)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def data_version(self) -> int:
        return int(await self.pool.fetchval("SELECT n FROM account_changes"))

    async def schema_version(self) -> int:
        return int(await self.pool.fetchval("SELECT version FROM schema_version"))

    async def _account_changed(self, db: Any) -> None:
        await db.execute("UPDATE account_changes SET n = n + 1")

    # --- accounts

    async def create_account(self, account: str, password_hash: str, now: float) -> bool:
        async with self.pool.acquire() as db, db.transaction():
            done = await db.execute("INSERT INTO accounts (account, password_hash, created_at) "
                                    "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                                    account, password_hash, now)
            if done.endswith(" 1"):
                await self._account_changed(db)
            return done.endswith(" 1")

    async def set_password(self, account: str, password_hash: str) -> bool:
        async with self.pool.acquire() as db, db.transaction():
            done = await db.execute("UPDATE accounts SET password_hash=$2 WHERE account=$1",
                                    account, password_hash)
            if done.endswith(" 1"):    # a new password ends every session of the account
                await db.execute("DELETE FROM sessions WHERE account=$1", account)
                await self._account_changed(db)
            return done.endswith(" 1")

    async def get_account(self, account: str) -> Account | None:
        r = await self.pool.fetchrow("SELECT * FROM accounts WHERE account=$1", account)
        return _account(r) if r else None

    async def list_accounts(self) -> list[Account]:
        return [_account(r) for r in await self.pool.fetch(
            "SELECT * FROM accounts ORDER BY account")]

    async def remove_account(self, account: str) -> bool:
        async with self.pool.acquire() as db, db.transaction():
            await db.execute("DELETE FROM sessions WHERE account=$1", account)
            done = await db.execute("DELETE FROM accounts WHERE account=$1", account)
            await self._account_changed(db)
            return done.endswith(" 1")

    async def set_mode(self, account: str, mode: str) -> None:
        async with self.pool.acquire() as db, db.transaction():
            await db.execute("UPDATE accounts SET mode=$2 WHERE account=$1", account, mode)
            await self._account_changed(db)

    async def account_modes(self) -> dict[str, str]:
        return {r[0]: r[1] for r in await self.pool.fetch("SELECT account, mode FROM accounts")}

    # --- sessions

    async def create_session(self, token_hash: str, account: str, expires_at: float) -> None:
        await self.pool.execute("INSERT INTO sessions VALUES ($1, $2, $3)",
                                token_hash, account, expires_at)

    async def get_session(self, token_hash: str, now: float) -> str | None:
        r = await self.pool.fetchrow("SELECT account, expires_at FROM sessions "
                                     "WHERE token_hash=$1", token_hash)
        if r is None:
            return None
        if r["expires_at"] <= now:
            await self.delete_session(token_hash)
            return None
        return str(r["account"])

    async def delete_session(self, token_hash: str) -> None:
        await self.pool.execute("DELETE FROM sessions WHERE token_hash=$1", token_hash)

    async def purge_sessions(self, now: float) -> int:
        done = await self.pool.execute("DELETE FROM sessions WHERE expires_at <= $1", now)
        return int(done.split()[-1])

    async def purge_mails(self, before: float, batch: int) -> list[str]:
        async with self.pool.acquire() as db, db.transaction():
            ids = [r[0] for r in await db.fetch(
                "SELECT mail_id FROM mails WHERE created_at < $1 AND NOT EXISTS (SELECT 1 "
                "FROM messages m WHERE m.mail_id = mails.mail_id AND m.ts >= $1) LIMIT $2 "
                "FOR UPDATE SKIP LOCKED", before, batch)]
            for table in ("reads", "digests", "messages", "members", "mails"):
                await db.execute(f"DELETE FROM {table} WHERE mail_id = ANY($1::text[])", ids)
            return ids

    # --- mails

    async def put_mail(self, mail: Mail) -> bool:
        vals = (mail.account, _clean(mail.message_id), _clean(mail.subject), _clean(mail.date),
                json.dumps(list(mail.recipients)), _clean(mail.body_text),
                _clean(mail.queue_id), json.dumps(mail.names))
        async with self.pool.acquire() as db, db.transaction():
            # A placeholder (a link opened early) is completed; a record is never replaced.
            done = await db.execute(
                "UPDATE mails SET recorded=TRUE, account=$1, message_id=$2, subject=$3, "
                "date=$4, recipients=$5, body_text=$6, queue_id=$7, names=$8 "
                "WHERE mail_id=$9 AND NOT recorded", *vals, mail.mail_id)
            if done.endswith(" 1"):
                return True
            done = await db.execute(
                "INSERT INTO mails (account, message_id, subject, date, recipients, body_text, "
                "queue_id, names, mail_id, recorded, created_at) VALUES "
                "($1, $2, $3, $4, $5, $6, $7, $8, $9, TRUE, $10) ON CONFLICT DO NOTHING",
                *vals, mail.mail_id, mail.created_at)
            return done.endswith(" 1")

    async def get_mail(self, mail_id: str) -> Mail | None:
        r = await self.pool.fetchrow("SELECT * FROM mails WHERE mail_id=$1", mail_id)
        return _mail(r) if r else None

    async def bind_mail(self, mail_id: str, account: str, now: float) -> Mail:
        await self.pool.execute("INSERT INTO mails (mail_id, account, recorded, created_at) "
                                "VALUES ($1, $2, FALSE, $3) ON CONFLICT DO NOTHING",
                                mail_id, account, now)
        mail = await self.get_mail(mail_id)
        assert mail is not None
        return mail

    async def mail_state(self, mail_id: str) -> MailState | None:
        r = await self.pool.fetchrow("SELECT account, recorded, recipients, message_id "
                                     "FROM mails WHERE mail_id=$1", mail_id)
        return _state(r) if r else None

    async def recent_mail_states(self, limit: int) -> list[tuple[str, MailState, float]]:
        return [(r["mail_id"], _state(r), r["created_at"]) for r in await self.pool.fetch(
            "SELECT mail_id, account, recorded, recipients, message_id, created_at FROM mails "
            "WHERE recorded ORDER BY created_at DESC LIMIT $1", limit)]

    # --- rooms

    async def join(self, mail_id: str, address: str, now: float) -> bool:
        done = await self.pool.execute("INSERT INTO members VALUES ($1, $2, $3) "
                                       "ON CONFLICT DO NOTHING", mail_id, address, now)
        return done.endswith(" 1")

    async def members(self, mail_id: str) -> list[str]:
        return [r[0] for r in await self.pool.fetch(
            "SELECT address FROM members WHERE mail_id=$1 ORDER BY joined_at, address", mail_id)]

    async def add_message(self, mail_id: str, author: str, text: str, now: float) -> Message:
        r = await self.pool.fetchrow("INSERT INTO messages (mail_id, author, text, ts) VALUES "
                                     "($1, $2, $3, $4) RETURNING *", mail_id, author,
                                     _clean(text), now)
        return _message(r)

    async def messages(self, mail_id: str, limit: int) -> list[Message]:
        rows = await self.pool.fetch("SELECT * FROM messages WHERE mail_id=$1 ORDER BY id DESC "
                                     "LIMIT $2", mail_id, limit)
        return [_message(r) for r in reversed(rows)]

    async def mark_read(self, mail_id: str, address: str, message_id: int) -> None:
        await self.pool.execute(
            "INSERT INTO reads VALUES ($1, $2, $3) ON CONFLICT (mail_id, address) DO UPDATE "
            "SET last_read = greatest(reads.last_read, excluded.last_read)",
            mail_id, address, message_id)

    async def conversations(self, account: str, limit: int) -> list[Conversation]:
        rows = await self.pool.fetch(
            """
            SELECT m.*,
              (SELECT string_agg(address, ' ') FROM members WHERE mail_id=m.mail_id)
                AS member_list,
              greatest(coalesce((SELECT max(ts) FROM messages WHERE mail_id=m.mail_id), 0),
                       coalesce((SELECT max(joined_at) FROM members WHERE mail_id=m.mail_id), 0))
                AS last_activity,
              (SELECT count(*) FROM messages WHERE mail_id=m.mail_id AND lower(author) != $1
                 AND id > coalesce((SELECT last_read FROM reads
                                    WHERE mail_id=m.mail_id AND address=$1), 0)) AS unread,
              (SELECT text FROM messages WHERE mail_id=m.mail_id ORDER BY id DESC LIMIT 1)
                AS last_text
            FROM mails m
            WHERE (m.account=$1 OR EXISTS (SELECT 1 FROM members
                                           WHERE mail_id=m.mail_id AND lower(address)=$1))
              AND (EXISTS (SELECT 1 FROM members WHERE mail_id=m.mail_id)
                   OR EXISTS (SELECT 1 FROM messages WHERE mail_id=m.mail_id))
            ORDER BY last_activity DESC LIMIT $2
            """, account, limit)
        return [Conversation(_mail(r), tuple(sorted((r["member_list"] or "").split())),
                             r["last_activity"], r["unread"], r["last_text"] or "")
                for r in rows]

    # --- digests

    async def quiet_rooms(self, quiet_before: float, since: float) -> list[tuple[str, int]]:
        return [(r[0], r[1]) for r in await self.pool.fetch(
            "SELECT m.mail_id, max(m.id) FROM messages m JOIN mails ON mails.mail_id = m.mail_id "
            "WHERE mails.recorded AND m.mail_id IN (SELECT DISTINCT mail_id FROM messages "
            "WHERE ts > $1) GROUP BY m.mail_id HAVING max(m.ts) <= $2", since, quiet_before)]

    async def digest_marks(self, mail_id: str) -> tuple[dict[str, int], dict[str, int]]:
        reads: dict[str, int] = {}
        for r in await self.pool.fetch("SELECT address, last_read FROM reads WHERE mail_id=$1",
                                       mail_id):
            reads[r[0].lower()] = max(r[1], reads.get(r[0].lower(), 0))
        done = {r[0].lower(): r[1] for r in await self.pool.fetch(
            "SELECT address, up_to FROM digests WHERE mail_id=$1 AND sent", mail_id)}
        return reads, done

    async def claim_digest(self, mail_id: str, address: str, up_to: int, now: float,
                           retry_before: float) -> bool:
        done = await self.pool.execute(
            "INSERT INTO digests (mail_id, address, up_to, claimed_at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (mail_id, address) DO UPDATE SET up_to=excluded.up_to, "
            "claimed_at=excluded.claimed_at, sent=FALSE WHERE digests.up_to < excluded.up_to "
            "OR (NOT digests.sent AND digests.claimed_at < $5)",
            mail_id, address.lower(), up_to, now, retry_before)
        return done.endswith(" 1")

    async def digest_sent(self, mail_id: str, address: str, up_to: int) -> None:
        await self.pool.execute("UPDATE digests SET sent=TRUE WHERE mail_id=$1 AND address=$2 "
                                "AND up_to=$3", mail_id, address.lower(), up_to)

    async def set_digests(self, address: str, on: bool) -> None:
        sql = ("DELETE FROM digests_off WHERE address=$1" if on else
               "INSERT INTO digests_off VALUES ($1) ON CONFLICT DO NOTHING")
        await self.pool.execute(sql, address.lower())

    async def digests_off(self, addresses: list[str]) -> set[str]:
        return {r[0] for r in await self.pool.fetch(
            "SELECT address FROM digests_off WHERE address = ANY($1::text[])",
            [a.lower() for a in addresses])}
