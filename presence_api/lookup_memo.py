"""What lookups read, kept in memory, and the shared reads of what is not.

A lookup is the presence service's hot path (one per delivered mail, from every
receiving MTA). It writes nothing (links are self-verifying, links.py), and reading
SQLite for it costs a hop to the store's worker thread, most of a lookup's time
(docs/benchmarks.md). So the store keeps:

- every account's presence mode (`modes`): all of them, so that a known and an
  unknown account cost the same dict lookup (a cache that missed on unknown accounts
  would tell them apart by time). Reloaded when another process (`mailtalk user`)
  changed the database;
- the state of recent mails (`mails`, bounded, oldest first out): the sender and the
  record's recipients, put here by `/api/v1/mails` when it stores a record, and the
  newest records loaded at start. So a Mail-ID issued after `complete_after` that is
  not in memory has no record: no read (records come only through this process's
  API; one presence process per database). `complete_after` is the start's cut-off
  and moves up with the issue time of every record evicted. An older Mail-ID is read
  once; "no record yet" is then kept only for `no_record_seconds`, since the record
  may still arrive (the outbox is asynchronous; a record stored here replaces it).

A wrong guess could only hand out a link to an address the record does not list, and
such a link does not open (links.py checks the record): the filter here is a courtesy,
not the guard.

The memo wraps a `Store` and uses only its storage methods, so that any back end
serves it. Writes that lookups must see at once (records, account modes) go through
it; what other processes write is picked up by `watch_accounts` and by the brief
life of "no record yet".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from mailtalk.mailid import MailIds
from presence_api.store import LookupContext, Mail, MailState, Store

log = logging.getLogger("mailtalk.presence.store")

# issued_at reads the Mail-ID's clear header: no key is used.
_issued_at = MailIds(bytes(32), 1).issued_at
# A Mail-ID may be issued up to this long after its record's clock says (mailid.py
# accepts issue times 300 s ahead).
CLOCK_SKEW = 300.0


class LookupMemo:
    """Accounts' modes and recent mails' state. Loop thread only."""

    def __init__(self, store: Store, max_mails: int, no_record_seconds: float,
                 accounts_reload: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.max_mails = max(1, max_mails)
        self.accounts_reload = accounts_reload
        self._data_version = 0
        self._watcher: asyncio.Task[None] | None = None
        self.no_record_seconds = no_record_seconds
        self._clock = clock
        self.modes: dict[str, str] = {}
        # mail_id -> (state, kept until: monotonic seconds; 0.0 = while there is room)
        self.mails: dict[str, tuple[MailState, float]] = {}
        # Bumped by every record stored: a read that ran concurrently may have missed it,
        # so its result is not remembered.
        self.epoch = 0
        # Every record of a Mail-ID issued after this (unix seconds) is in `mails`.
        self.complete_after = float("inf")      # nothing known until load()

    async def open(self) -> None:
        """Load every account's mode and the newest records; watch for other writers."""
        self._data_version = await self.store.data_version()
        self.modes = await self.store.account_modes()
        rows = await self.store.recent_mail_states(self.max_mails + 1)
        for mail_id, state, _ in reversed(rows[:self.max_mails]):
            self.mails[mail_id] = (state, 0.0)
        # A record that did not fit: Mail-IDs issued up to its time must be read.
        left_out = rows[self.max_mails][2] if len(rows) > self.max_mails else None
        self.complete_after = 0.0 if left_out is None else left_out + CLOCK_SKEW
        self._watcher = asyncio.create_task(self._watch_accounts())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def _watch_accounts(self) -> None:
        """`mailtalk user` changes accounts from another process: reload the modes."""
        while True:
            await asyncio.sleep(self.accounts_reload)
            try:
                version = await self.store.data_version()
                if version == self._data_version:
                    continue
                modes = await self.store.account_modes()
            except Exception:
                log.exception("reloading accounts failed")
                continue
            self._data_version = version
            log.info("accounts changed by another process: %d loaded", len(modes))
            self.modes = modes

    # --- what lookups ask (api.py)

    def has_no_record(self, mail_id: str) -> bool:
        """True when the store surely holds no record of this mail (not in memory)."""
        issued = _issued_at(mail_id)
        return issued is not None and issued > self.complete_after

    def context(self, account: str, mail_id: str) -> LookupContext:
        entry = self.mails.get(mail_id)
        if entry is not None and entry[1] and entry[1] < self._clock():
            entry = None          # "no record yet" has aged: read again
        return LookupContext(self.modes.get(account), entry[0] if entry else None)

    async def mail_state(self, mail_id: str, account: str) -> MailState:
        """The state of a mail not in memory: read once and remembered. `account` is
        the verified sender, used when there is no row."""
        if self.has_no_record(mail_id):      # a new Mail-ID: nothing to read
            return MailState(account, None)
        epoch = self.epoch
        state = await self.store.mail_state(mail_id) or MailState(account, None)
        if epoch == self.epoch:              # else a record was stored meanwhile: keep it
            self.remember(mail_id, state)
        return state

    def remember(self, mail_id: str, mail: MailState) -> None:
        """A recorded mail stays while there is room; one with no record only briefly."""
        until = 0.0 if mail.allowed is not None else self._clock() + self.no_record_seconds
        mails = self.mails
        mails.pop(mail_id, None)            # re-inserted: newest again
        mails[mail_id] = (mail, until)
        while len(mails) > self.max_mails:
            old = next(iter(mails))
            if mails.pop(old)[0].allowed is not None:      # a record leaves memory
                self.complete_after = max(self.complete_after, _issued_at(old) or 0.0)

    def forget(self, mail_ids: list[str]) -> None:
        """Records purged from the store (their Mail-IDs have expired: config.py)."""
        for mail_id in mail_ids:
            self.mails.pop(mail_id, None)

    # --- writes that lookups must see at once

    async def put_mail(self, mail: Mail) -> bool:
        """Store the milter's record; from now on it decides who gets links."""
        self.epoch += 1
        stored = await self.store.put_mail(mail)
        self.epoch += 1
        if stored:
            state: MailState | None = MailState(
                mail.account, frozenset(r.lower() for r in mail.recipients), mail.message_id)
        else:                     # already there: the record as it was first stored
            state = await self.store.mail_state(mail.mail_id)
        if state is not None:
            self.remember(mail.mail_id, state)
        return stored

    async def create_account(self, account: str, password_hash: str, now: float) -> bool:
        created = await self.store.create_account(account, password_hash, now)
        if created:
            self.modes[account] = "auto"
        return created

    async def remove_account(self, account: str) -> bool:
        removed = await self.store.remove_account(account)
        self.modes.pop(account, None)
        return removed

    async def set_mode(self, account: str, mode: str) -> None:
        await self.store.set_mode(account, mode)
        if account in self.modes:
            self.modes[account] = mode


