"""SQLite back end of `store.Store`: the embedded default, one file, no server.

Every call runs in the connection's worker thread (mailtalk/sqlite.py). Storage
only: what lookups keep in memory lives in lookup_memo.py. The schema is created and
migrated at `open()` from the numbered steps in MIGRATIONS (store_schema.py),
recorded in `schema_version`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mailtalk import sqlite
from presence_api.store import (
    Account,
    Conversation,
    Mail,
    MailState,
    Message,
)
from presence_api.store_schema import MIGRATIONS
from presence_api.store_sqlite_digests import SqliteDigests

log = logging.getLogger("mailtalk.presence.store")
T = TypeVar("T")


def sqlite_path(database: str) -> Path:
    """`/path`, `sqlite:///path` (or `sqlite:////path`) -> Path. Other URLs are the
    caller's problem."""
    if database.startswith("sqlite://"):
        rest = database[len("sqlite://"):]
        return Path("/" + rest.lstrip("/")) if rest.startswith("/") else Path(rest)
    return Path(database)


def _mail(row: sqlite3.Row) -> Mail:
    return Mail(mail_id=row["mail_id"], account=row["account"], recorded=bool(row["recorded"]),
                message_id=row["message_id"], subject=row["subject"], date=row["date"],
                recipients=tuple(json.loads(row["recipients"])), body_text=row["body_text"],
                queue_id=row["queue_id"], created_at=row["created_at"],
                names=json.loads(row["names"]))


def _state(row: sqlite3.Row) -> MailState:
    """What a lookup needs of a mail row (a placeholder allows every recipient)."""
    allowed = (frozenset(r.lower() for r in json.loads(row["recipients"]))
               if row["recorded"] else None)
    return MailState(row["account"], allowed, row["message_id"] or "" if row["recorded"] else "")


def _account(row: sqlite3.Row) -> Account:
    return Account(row["account"], row["password_hash"], row["mode"], row["created_at"])


def _message(row: sqlite3.Row) -> Message:
    return Message(row["id"], row["mail_id"], row["author"], row["text"], row["ts"])


class SqliteStore(SqliteDigests):
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._worker = sqlite.Worker("presence-sqlite")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._worker.run(fn, *args)

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "store not open"
        return self._db

    # --- lifecycle

    def _open(self) -> None:
        db = sqlite.connect(self.path)     # password and session hashes: owner only
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        self._db = db
        self._migrate()

    def _migrate(self) -> None:
        db = self.db
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        current = row[0] if row else 0
        if current > len(MIGRATIONS):
            raise RuntimeError(f"{self.path}: schema version {current} is newer than this "
                               f"mailtalk knows ({len(MIGRATIONS)})")
        for version in range(current + 1, len(MIGRATIONS) + 1):
            log.info("%s: migrating schema to version %d", self.path, version)
            db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in MIGRATIONS[version - 1].split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version VALUES (?)", (version,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self.db.close)
            self._db = None
        self._worker.shutdown()

    async def data_version(self) -> int:
        # Changes only with commits of other connections (`mailtalk user`).
        return int(await self._run(
            lambda: self.db.execute("PRAGMA data_version").fetchone()[0]))

    async def schema_version(self) -> int:
        return await self._run(lambda: self.db.execute(
            "SELECT version FROM schema_version").fetchone()[0])

    # --- accounts

    async def create_account(self, account: str, password_hash: str, now: float) -> bool:
        def do() -> bool:
            cur = self.db.execute("INSERT OR IGNORE INTO accounts (account, password_hash, "
                                  "created_at) VALUES (?, ?, ?)", (account, password_hash, now))
            return cur.rowcount == 1
        return await self._run(do)

    async def set_password(self, account: str, password_hash: str) -> bool:
        def do() -> bool:
            cur = self.db.execute("UPDATE accounts SET password_hash=? WHERE account=?",
                                  (password_hash, account))
            if cur.rowcount:   # a new password ends every session of the account
                self.db.execute("DELETE FROM sessions WHERE account=?", (account,))
            return cur.rowcount == 1
        return await self._run(do)

    def _get_account(self, account: str) -> Account | None:
        row = self.db.execute("SELECT * FROM accounts WHERE account=?", (account,)).fetchone()
        return _account(row) if row else None

    async def get_account(self, account: str) -> Account | None:
        return await self._run(self._get_account, account)

    async def list_accounts(self) -> list[Account]:
        return await self._run(lambda: [_account(r) for r in self.db.execute(
            "SELECT * FROM accounts ORDER BY account")])

    async def remove_account(self, account: str) -> bool:
        def do() -> bool:
            self.db.execute("DELETE FROM sessions WHERE account=?", (account,))
            return self.db.execute("DELETE FROM accounts WHERE account=?",
                                   (account,)).rowcount == 1
        return await self._run(do)

    async def set_mode(self, account: str, mode: str) -> None:
        await self._run(lambda: self.db.execute(
            "UPDATE accounts SET mode=? WHERE account=?", (mode, account)))

    async def account_modes(self) -> dict[str, str]:
        return await self._run(lambda: dict(self.db.execute(
            "SELECT account, mode FROM accounts").fetchall()))

    # --- sessions

    async def create_session(self, token_hash: str, account: str, expires_at: float) -> None:
        await self._run(lambda: self.db.execute(
            "INSERT INTO sessions VALUES (?, ?, ?)", (token_hash, account, expires_at)))

    async def get_session(self, token_hash: str, now: float) -> str | None:
        def do() -> str | None:
            row = self.db.execute("SELECT account, expires_at FROM sessions WHERE token_hash=?",
                                  (token_hash,)).fetchone()
            if row is None:
                return None
            if row["expires_at"] <= now:
                self.db.execute("DELETE FROM sessions WHERE token_hash=?", (token_hash,))
                return None
            return str(row["account"])
        return await self._run(do)

    async def delete_session(self, token_hash: str) -> None:
        await self._run(lambda: self.db.execute("DELETE FROM sessions WHERE token_hash=?",
                                                (token_hash,)))

    async def purge_mails(self, before: float, batch: int) -> list[str]:
        def do() -> list[str]:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                ids = [r[0] for r in db.execute(
                    "SELECT mail_id FROM mails WHERE created_at < ? AND NOT EXISTS (SELECT 1 "
                    "FROM messages m WHERE m.mail_id = mails.mail_id AND m.ts >= ?) LIMIT ?",
                    (before, before, batch))]
                for table in ("reads", "digests", "messages", "members", "mails"):
                    db.executemany(f"DELETE FROM {table} WHERE mail_id = ?",
                                   [(i,) for i in ids])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return ids
        return await self._run(do)

    async def purge_sessions(self, now: float) -> int:
        return await self._run(lambda: self.db.execute(
            "DELETE FROM sessions WHERE expires_at <= ?", (now,)).rowcount)

    # --- mails

    async def put_mail(self, mail: Mail) -> bool:
        def do() -> bool:
            vals = (mail.account, mail.message_id, mail.subject, mail.date,
                    json.dumps(list(mail.recipients)), mail.body_text, mail.queue_id,
                    json.dumps(mail.names))
            # A placeholder (a link opened early) is completed; a record is never replaced.
            cur = self.db.execute(
                "UPDATE mails SET recorded=1, account=?, message_id=?, subject=?, date=?, "
                "recipients=?, body_text=?, queue_id=?, names=? WHERE mail_id=? AND recorded=0",
                vals + (mail.mail_id,))
            if cur.rowcount:
                return True
            cur = self.db.execute(
                "INSERT OR IGNORE INTO mails (mail_id, account, recorded, message_id, subject, "
                "date, recipients, body_text, queue_id, names, created_at) "
                "VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?)",
                (mail.mail_id,) + vals + (mail.created_at,))
            return cur.rowcount == 1
        return await self._run(do)

    def _get_mail(self, mail_id: str) -> Mail | None:
        row = self.db.execute("SELECT * FROM mails WHERE mail_id=?", (mail_id,)).fetchone()
        return _mail(row) if row else None

    async def get_mail(self, mail_id: str) -> Mail | None:
        return await self._run(self._get_mail, mail_id)

    async def bind_mail(self, mail_id: str, account: str, now: float) -> Mail:
        def do() -> Mail:
            self.db.execute("INSERT OR IGNORE INTO mails (mail_id, account, recorded, "
                            "created_at) VALUES (?, ?, 0, ?)", (mail_id, account, now))
            mail = self._get_mail(mail_id)
            assert mail is not None
            return mail
        return await self._run(do)

    async def mail_state(self, mail_id: str) -> MailState | None:
        def do() -> MailState | None:
            row = self.db.execute("SELECT account, recorded, recipients, message_id FROM mails "
                                  "WHERE mail_id=?", (mail_id,)).fetchone()
            return _state(row) if row else None
        return await self._run(do)

    async def recent_mail_states(self, limit: int) -> list[tuple[str, MailState, float]]:
        return await self._run(lambda: [(r["mail_id"], _state(r), r["created_at"]) for r in
                                        self.db.execute(
            "SELECT mail_id, account, recorded, recipients, message_id, created_at FROM mails "
            "WHERE recorded=1 ORDER BY created_at DESC LIMIT ?", (limit,))])

    # --- rooms

    async def join(self, mail_id: str, address: str, now: float) -> bool:
        return await self._run(lambda: self.db.execute(
            "INSERT OR IGNORE INTO members VALUES (?, ?, ?)",
            (mail_id, address, now)).rowcount == 1)

    async def members(self, mail_id: str) -> list[str]:
        return await self._run(lambda: [r[0] for r in self.db.execute(
            "SELECT address FROM members WHERE mail_id=? ORDER BY joined_at, address",
            (mail_id,))])

    async def add_message(self, mail_id: str, author: str, text: str, now: float) -> Message:
        def do() -> Message:
            cur = self.db.execute("INSERT INTO messages (mail_id, author, text, ts) "
                                  "VALUES (?, ?, ?, ?)", (mail_id, author, text, now))
            return Message(int(cur.lastrowid or 0), mail_id, author, text, now)
        return await self._run(do)

    async def messages(self, mail_id: str, limit: int) -> list[Message]:
        def do() -> list[Message]:
            rows = self.db.execute("SELECT * FROM messages WHERE mail_id=? ORDER BY id DESC "
                                   "LIMIT ?", (mail_id, limit)).fetchall()
            return [_message(r) for r in reversed(rows)]
        return await self._run(do)

    async def mark_read(self, mail_id: str, address: str, message_id: int) -> None:
        await self._run(lambda: self.db.execute(
            "INSERT INTO reads VALUES (?, ?, ?) ON CONFLICT (mail_id, address) DO UPDATE "
            "SET last_read=max(last_read, excluded.last_read)", (mail_id, address, message_id)))

    async def conversations(self, account: str, limit: int) -> list[Conversation]:
        def do() -> list[Conversation]:
            # A sent mail is a conversation once a recipient opened it or someone wrote.
            rows = self.db.execute(
                """
                SELECT m.*,
                  (SELECT group_concat(address, ' ') FROM members WHERE mail_id=m.mail_id)
                    AS member_list,
                  max(coalesce((SELECT max(ts) FROM messages WHERE mail_id=m.mail_id), 0),
                      coalesce((SELECT max(joined_at) FROM members WHERE mail_id=m.mail_id), 0))
                    AS last_activity,
                  (SELECT count(*) FROM messages WHERE mail_id=m.mail_id
                     AND lower(author) != :a
                     AND id > coalesce((SELECT last_read FROM reads
                                        WHERE mail_id=m.mail_id AND address=:a), 0)) AS unread,
                  (SELECT text FROM messages WHERE mail_id=m.mail_id ORDER BY id DESC LIMIT 1)
                    AS last_text
                FROM mails m
                WHERE (m.account=:a OR EXISTS (SELECT 1 FROM members
                                               WHERE mail_id=m.mail_id AND lower(address)=:a))
                  AND (EXISTS (SELECT 1 FROM members WHERE mail_id=m.mail_id)
                                        OR EXISTS (SELECT 1 FROM messages WHERE mail_id=m.mail_id))
                ORDER BY last_activity DESC LIMIT :n
                """, {"a": account, "n": limit}).fetchall()
            return [Conversation(_mail(r), tuple(sorted((r["member_list"] or "").split())),
                                 r["last_activity"], r["unread"], r["last_text"] or "")
                    for r in rows]
        return await self._run(do)
