"""The PostgreSQL schema of the presence store (store_pg.py), as numbered migration
steps; the same tables and meaning as the SQLite schema (store_schema.py), which
reached the same state in four steps."""

from __future__ import annotations

MIGRATE_LOCK = 0x6D61696C74616C6B      # pg_advisory_xact_lock key: "mailtalk"

# Append only: a deployed database has run every step up to its version.
PG_MIGRATIONS: list[str] = [
    """
    CREATE TABLE accounts (
        account TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        mode TEXT NOT NULL DEFAULT 'auto',
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE account_changes (n BIGINT NOT NULL);
    INSERT INTO account_changes VALUES (0);
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        account TEXT NOT NULL REFERENCES accounts(account) ON DELETE CASCADE,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE mails (
        mail_id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        recorded BOOLEAN NOT NULL,
        message_id TEXT NOT NULL DEFAULT '',
        subject TEXT NOT NULL DEFAULT '',
        date TEXT NOT NULL DEFAULT '',
        recipients TEXT NOT NULL DEFAULT '[]',
        body_text TEXT NOT NULL DEFAULT '',
        queue_id TEXT NOT NULL DEFAULT '',
        names TEXT NOT NULL DEFAULT '{}',
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX mails_account ON mails(account);
    CREATE INDEX mails_created ON mails(created_at);
    CREATE TABLE members (
        mail_id TEXT NOT NULL REFERENCES mails(mail_id),
        address TEXT NOT NULL,
        joined_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (mail_id, address)
    );
    CREATE TABLE messages (
        id BIGSERIAL PRIMARY KEY,
        mail_id TEXT NOT NULL REFERENCES mails(mail_id),
        author TEXT NOT NULL,
        text TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX messages_mail ON messages(mail_id, id);
    CREATE INDEX messages_ts ON messages(ts);
    CREATE TABLE reads (
        mail_id TEXT NOT NULL,
        address TEXT NOT NULL,
        last_read BIGINT NOT NULL,
        PRIMARY KEY (mail_id, address)
    );
    CREATE TABLE digests (
        mail_id TEXT NOT NULL,
        address TEXT NOT NULL,
        up_to BIGINT NOT NULL,
        claimed_at DOUBLE PRECISION NOT NULL,
        sent BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (mail_id, address)
    );
    CREATE TABLE digests_off (address TEXT PRIMARY KEY);
    """,
]
