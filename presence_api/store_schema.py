"""The SQLite schema of the presence service's store, as numbered migration steps.

`store_sqlite.SqliteStore.open()` runs the steps a database has not run yet and
records its version in `schema_version`.
"""

from __future__ import annotations

# Append only: a deployed database has run every step up to its version.
MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE accounts (
        account TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        mode TEXT NOT NULL DEFAULT 'auto',
        created_at REAL NOT NULL
    );
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        account TEXT NOT NULL REFERENCES accounts(account) ON DELETE CASCADE,
        expires_at REAL NOT NULL
    );
    CREATE TABLE mails (
        mail_id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        recorded INTEGER NOT NULL,
        message_id TEXT NOT NULL DEFAULT '',
        subject TEXT NOT NULL DEFAULT '',
        date TEXT NOT NULL DEFAULT '',
        recipients TEXT NOT NULL DEFAULT '[]',
        body_text TEXT NOT NULL DEFAULT '',
        queue_id TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    CREATE INDEX mails_account ON mails(account);
    CREATE TABLE links (
        token_hash TEXT PRIMARY KEY,
        mail_id TEXT NOT NULL REFERENCES mails(mail_id),
        recipient TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        UNIQUE (mail_id, recipient)
    );
    CREATE TABLE members (
        mail_id TEXT NOT NULL REFERENCES mails(mail_id),
        address TEXT NOT NULL,
        joined_at REAL NOT NULL,
        PRIMARY KEY (mail_id, address)
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        mail_id TEXT NOT NULL REFERENCES mails(mail_id),
        author TEXT NOT NULL,
        text TEXT NOT NULL,
        ts REAL NOT NULL
    );
    CREATE INDEX messages_mail ON messages(mail_id, id);
    CREATE TABLE reads (
        mail_id TEXT NOT NULL,
        address TEXT NOT NULL,
        last_read INTEGER NOT NULL,
        PRIMARY KEY (mail_id, address)
    );
    """,
    # 2: links are self-verifying (links.py): no link rows, and lookups no longer bind
    # a placeholder mail; those nobody opened or wrote about go with the table. The
    # newest records are loaded into memory at start (lookup_memo.py): by created_at.
    """
    DROP TABLE links;
    CREATE INDEX mails_created ON mails(created_at);
    DELETE FROM mails WHERE recorded = 0
        AND NOT EXISTS (SELECT 1 FROM members WHERE members.mail_id = mails.mail_id)
        AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.mail_id = mails.mail_id);
    """,
    # 3: digests (digest.py): per participant, the last message a digest covered and
    # whether it went out (a claim not sent is retried); who turned digests off.
    """
    CREATE TABLE digests (
        mail_id TEXT NOT NULL,
        address TEXT NOT NULL,
        up_to INTEGER NOT NULL,
        claimed_at REAL NOT NULL,
        sent INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (mail_id, address)
    );
    CREATE TABLE digests_off (address TEXT PRIMARY KEY);
    CREATE INDEX messages_ts ON messages(ts);
    """,
    # 4: display names from the mail's From, To and Cc (JSON: address -> name).
    """
    ALTER TABLE mails ADD COLUMN names TEXT NOT NULL DEFAULT '{}';
    """,
]
