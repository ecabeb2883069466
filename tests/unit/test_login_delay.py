"""Failed log-ins per (account, client address) earn growing delays; a success or a
quiet spell forgets them, and other pairs are never slowed (presence_api.auth)."""

from __future__ import annotations

import asyncio

import pytest

from presence_api import auth
from presence_api.auth import FAILURE_MEMORY, FREE_FAILURES, PAIR_DELAY_MAX, GrowingDelay


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_after_the_free_failures_and_stop_at_the_cap() -> None:
    clock = Clock()
    d = GrowingDelay(clock)
    seen = []
    for _ in range(12):
        seen.append(d.delay("k"))
        d.failed("k")
    assert seen[:FREE_FAILURES + 1] == [0.0] * (FREE_FAILURES + 1)
    assert seen[FREE_FAILURES + 1:FREE_FAILURES + 5] == [0.5, 1.0, 2.0, 4.0]
    assert max(seen) == PAIR_DELAY_MAX and seen[-1] == PAIR_DELAY_MAX
    assert d.delay("other") == 0.0


def test_success_and_a_quiet_spell_forget() -> None:
    clock = Clock()
    d = GrowingDelay(clock)
    for _ in range(FREE_FAILURES + 2):
        d.failed("k")
    assert d.delay("k") > 0
    d.succeeded("k")
    assert d.delay("k") == 0.0
    for _ in range(FREE_FAILURES + 2):
        d.failed("k")
    clock.now += FAILURE_MEMORY + 1
    assert d.delay("k") == 0.0
    d.failed("k")                       # counting starts again
    assert d.delay("k") == 0.0


class _Store:
    async def get_account(self, account: str) -> None:
        return None


async def test_login_waits_the_pairs_delay_before_answering(monkeypatch) -> None:
    waits: list[float] = []

    async def fake_sleep(s: float) -> None:    # records instead of waiting seconds
        waits.append(s)
    monkeypatch.setattr(auth.asyncio, "sleep", fake_sleep)
    a = auth.Auth(_Store(), b"k" * 32, 3600, attempts_per_minute=100, clock=Clock())
    for _ in range(FREE_FAILURES + 3):
        assert await a.login("10.0.0.1", "bob@b.test", "wrong password") is None
    assert waits == [0.5, 1.0]
    assert await a.login("10.0.0.2", "bob@b.test", "wrong password") is None
    assert waits == [0.5, 1.0]              # another address: no delay
