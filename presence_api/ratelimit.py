"""A fixed-window counter per key: cheap, bounded memory, clock passed in for tests.

With several presence processes (bus.py) every hit is also told to the others
(`on_hit`), which count it too (`count`): each process sees every process's hits,
so a client meets the limit, not the limit times the processes. The windows are
each process's own, so the count is close, not exact, at a window's edge.
"""

from __future__ import annotations

import time
from typing import Callable

# Forget windows this many at a time, so memory stays bounded under a flood of keys.
_MAX_KEYS = 100_000


class RateLimiter:
    def __init__(self, limit: int, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_hit: Callable[[str, int], None] | None = None    # tell the others
        self.limit = limit
        self.window = window
        self._clock = clock
        self._start = clock()
        self._counts: dict[str, int] = {}

    def _roll(self) -> None:
        now = self._clock()
        if now - self._start >= self.window or len(self._counts) > _MAX_KEYS:
            self._start = now
            self._counts.clear()

    def hit(self, key: str, events: int = 1) -> bool:
        """Count `events` events for `key`; False when that goes over the limit."""
        n = self.count(key, events)
        if self.on_hit is not None:
            self.on_hit(key, events)
        return n <= self.limit

    def count(self, key: str, events: int = 1) -> int:
        """Count events (another process's, or ours); the count in this window."""
        self._roll()
        n = self._counts.get(key, 0) + events
        self._counts[key] = n
        return n

    def blocked(self, key: str) -> bool:
        """Over the limit already, without counting."""
        self._roll()
        return self._counts.get(key, 0) >= self.limit
