"""The storage interface of the presence service.

Web, chat and API code talk only to `Store`; `store_sqlite.SqliteStore` is the one
back end today. A PostgreSQL back end (several processes) implements the same
methods; nothing above this line changes. A store is storage only: what lookups keep
in memory is `lookup_memo.LookupMemo`, which any back end serves through these methods. Every method is a coroutine so that a
network database fits as well as SQLite run in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

class StoreUnavailable(Exception):
    """The database cannot be reached; str() says why (a back end raises it at open)."""


# Presence modes a user can choose; "auto" means: online/away from activity.
MODES = ("auto", "busy", "offline")


@dataclass(frozen=True)
class Account:
    account: str
    password_hash: str
    mode: str            # one of MODES
    created_at: float


@dataclass(frozen=True)
class Mail:
    mail_id: str
    account: str                     # the sender
    recorded: bool                   # False: a placeholder (a link opened before the record)
    message_id: str = ""
    subject: str = ""
    date: str = ""
    recipients: tuple[str, ...] = ()
    body_text: str = ""
    queue_id: str = ""
    created_at: float = 0.0
    names: dict[str, str] = field(default_factory=dict)   # address -> display name


@dataclass(frozen=True)
class Message:
    id: int
    mail_id: str
    author: str
    text: str
    ts: float


@dataclass(frozen=True)
class Conversation:
    """One sent mail seen as a chat room, for the sender's list."""
    mail: Mail
    members: tuple[str, ...]          # recipients who opened their link
    last_activity: float
    unread: int
    last_text: str = ""


@dataclass(frozen=True, slots=True)
class MailState:
    """What a lookup needs of a mail: its sender, whom the milter's record allows
    (`allowed` None: no record known, every recipient asked gets a link) and the
    record's Message-ID ("" when unknown: not compared)."""
    account: str
    allowed: frozenset[str] | None    # the record's recipients, lowercased
    message_id: str = ""

    def matches(self, message_id: Any) -> bool:
        """Does a lookup's Message-ID fit the record (claims bound to their mail)?"""
        return not self.message_id or message_id == self.message_id

    def allows(self, recipient: str) -> bool:
        return self.allowed is None or recipient.lower() in self.allowed


@dataclass(frozen=True, slots=True)
class LookupContext:
    """What one lookup needs, from memory on every path (the same work for all):
    `mode` is None when there is no such account; `mail` is None when the memo holds
    no state of that mail (then `LookupMemo.mail_state` reads it)."""
    mode: str | None
    mail: MailState | None


class Store(Protocol):
    async def open(self) -> None:
        """Connect, create or migrate the schema."""

    async def close(self) -> None: ...

    # accounts
    async def create_account(self, account: str, password_hash: str, now: float) -> bool: ...
    async def set_password(self, account: str, password_hash: str) -> bool: ...
    async def get_account(self, account: str) -> Account | None: ...
    async def list_accounts(self) -> list[Account]: ...
    async def remove_account(self, account: str) -> bool: ...
    async def set_mode(self, account: str, mode: str) -> None: ...
    async def account_modes(self) -> dict[str, str]:
        """Every account's presence mode."""

    async def data_version(self) -> int:
        """A number that changes when another process changed the database."""

    # sessions (the token's hash only; the cookie holds the token)
    async def create_session(self, token_hash: str, account: str, expires_at: float) -> None: ...
    async def get_session(self, token_hash: str, now: float) -> str | None: ...
    async def delete_session(self, token_hash: str) -> None: ...
    async def purge_mails(self, before: float, batch: int) -> list[str]:
        """Delete up to `batch` mail records made before `before` whose chat has no
        message since, with their members, messages and read marks; their Mail-IDs."""
        ...

    async def purge_sessions(self, now: float) -> int:
        """Delete expired sessions; how many."""

    # sent mails
    async def put_mail(self, mail: Mail) -> bool:
        """Store the milter's record; True if stored now, False if it was already there."""

    async def bind_mail(self, mail_id: str, account: str, now: float) -> Mail:
        """The mail row for a verified Mail-ID: the record, or a placeholder (inserted
        now) if none arrived yet. Called when a link is opened, never by lookups."""

    async def get_mail(self, mail_id: str) -> Mail | None: ...
    async def mail_state(self, mail_id: str) -> MailState | None:
        """What a lookup needs of a mail row (None: no row)."""

    async def recent_mail_states(self, limit: int) -> list[tuple[str, MailState, float]]:
        """(mail_id, state, created_at) of the newest records, newest first."""

    # rooms (one per Mail-ID)
    async def join(self, mail_id: str, address: str, now: float) -> bool:
        """Make `address` a member; True if it was not one before."""

    async def members(self, mail_id: str) -> list[str]: ...
    async def add_message(self, mail_id: str, author: str, text: str, now: float) -> Message: ...
    async def messages(self, mail_id: str, limit: int) -> list[Message]: ...
    async def mark_read(self, mail_id: str, address: str, message_id: int) -> None: ...
    # digests (digest.py)
    async def quiet_rooms(self, quiet_before: float, since: float) -> list[tuple[str, int]]:
        """(mail_id, newest message id) of recorded mails whose newest message came
        after `since` and no later than `quiet_before`."""

    async def digest_marks(self, mail_id: str) -> tuple[dict[str, int], dict[str, int]]:
        """Per lowercased address: the last message read on a page, and the last
        message a digest that went out covered."""

    async def claim_digest(self, mail_id: str, address: str, up_to: int, now: float,
                           retry_before: float) -> bool:
        """Claim the digest up to `up_to` for `address`: True for the one caller that
        gets it (a newer one than before, or a claim made before `retry_before` that
        never went out)."""

    async def digest_sent(self, mail_id: str, address: str, up_to: int) -> None: ...
    async def set_digests(self, address: str, on: bool) -> None: ...
    async def digests_off(self, addresses: list[str]) -> set[str]:
        """Those of `addresses` (lowercased) who turned their digests off."""

    async def conversations(self, account: str, limit: int) -> list[Conversation]:
        """The account's sent mails with activity, and the rooms it joined as a
        recipient; newest activity first."""
