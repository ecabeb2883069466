"""Time as mailtalk writes it: UTC, whole seconds, RFC 3339 with `Z`."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def rfc3339(ts: datetime | float) -> str:
    """2026-11-29T07:00:00Z, from an aware or naive-UTC datetime or a Unix time."""
    if not isinstance(ts, datetime):       # every lookup answer: 1.6 us, not 4.6 via datetime
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
