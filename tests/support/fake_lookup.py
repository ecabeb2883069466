"""A stand-in for the presence lookup (the network), and messages that carry a claim.

Used by tests of the receiving decision and its adapters, which need a lookup that
answers at once, late, or with an error, and records what it was asked."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from mailtalk.lookup import LookupResult

NOW = datetime(2026, 11, 29, 7, 0, 0, tzinfo=timezone.utc)
MAIL_ID = "A" * 22 + "b-_9" * 5
CLAIM = ("X-Messenger-Account: alice@a.example", f"X-Mail-ID: {MAIL_ID}")


class FakeLookup:
    """Stands in for mailtalk.lookup.PresenceLookup: bounded by the test, not the network."""

    def __init__(self, status: str = "online", delay: float = 0.0, error: Exception | None = None,
                 links: dict[str, str] | None = None) -> None:
        self.status, self.delay, self.error, self.links = status, delay, error, links
        self.calls: list[tuple[str, str, list[str]]] = []
        self.message_ids: list[str] = []

    async def lookup(self, account: str, mail_id: str, recipients: list[str],
                     *, message_id: str = "", queue_id: str = "-") -> LookupResult:
        self.calls.append((account, mail_id, list(recipients)))
        self.message_ids.append(message_id)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error:
            raise self.error
        links = self.links if self.links is not None else {
            r: f"https://chat.a.example/c/{r.split('@')[0]}" for r in recipients}
        return LookupResult(self.status, NOW, links)


def msg(*headers: str, body: bytes = b"Hello\r\n") -> bytes:
    return "".join(h + "\r\n" for h in headers).encode() + b"\r\n" + body
