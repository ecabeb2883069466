"""The content filter under a slow-connection flood: a cap per client
address (a 421 at once beyond it), and a client that sends nothing, a partial command,
NOOPs or its message a byte at a time is dropped after its time budget; a normal
transaction still goes through, also one whose lookup (our time) outlasts that budget.

Small limits are injected (`SmtpLimits`, loopback not exempt so that one 127.0.13.x
address is a client address); each wait is for a condition with a deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

from mailtalk_milter.filter_smtp import SmtpLimits
from support.fake_lookup import CLAIM, FakeLookup, msg
from support.filter_harness import HOST, Harness, start_filter
from support.slow_clients import Held, close_all, hold, hold_many

FLOODER = "127.0.13.31"
CAP = 5
BUDGET = 1.5                  # the client's seconds per transaction in these tests
LOOKUP_DELAY = 2.5            # our time: longer than the client's budget
LIMITS = SmtpLimits(per_address=CAP, total=1000, client_timeout=BUDGET, exempt=())


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness, things = await start_filter(FakeLookup("online", delay=LOOKUP_DELAY),
                                         state_dir=tmp_path, limits=LIMITS)
    yield harness
    await things[0].close()
    things[1].close()


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


async def test_beyond_the_cap_a_421_at_once_and_the_silent_ones_are_dropped(h: Harness) -> None:
    held = await hold_many(HOST, h.running.port, FLOODER, 20)
    try:
        refused = lambda: [x for x in held if x.received.startswith(b"421 4.7.0")]  # noqa: E731
        await until(lambda: len(refused()) == 20 - CAP
                    and all(x.closed_after is not None for x in refused()),
                    BUDGET * 0.8, "the refused answered 421 and closed")
        greeted = [x for x in held if x.received.startswith(b"220 ")]
        assert len(greeted) == CAP
        # Postfix, from another address, still delivers (while the flooder holds its cap).
        sending = asyncio.create_task(h.send(["bob@b.example"], msg(*CLAIM)))
        await until(lambda: all(x.closed_after is not None for x in greeted), BUDGET + 5,
                    "the silent ones dropped")
        assert min(x.closed_after for x in greeted) >= BUDGET - 0.1
        r = await asyncio.wait_for(sending, 20)
        assert r.data[0] == 250 and len(h.sink.got) == 1
    finally:
        await close_all(held)


async def test_slow_clients_are_dropped_and_a_slow_lookup_is_not(h: Harness, caplog) -> None:
    port = h.running.port
    partial = await hold(HOST, port, FLOODER, b"EHL")
    noop = await hold(HOST, port, FLOODER, b"EHLO x\r\n")
    data = await hold(HOST, port, FLOODER, b"EHLO x\r\nMAIL FROM:<a@a.example>\r\n"
                      b"RCPT TO:<b@b.example>\r\nDATA\r\n")
    drips = [asyncio.create_task(noop.drip(b"NOOP\r\n" * 100, every=0.05)),
             asyncio.create_task(data.drip(b"Subject: slow\r\n\r\n" + b"x" * 100, every=0.2))]
    slow: list[Held] = [partial, noop, data]
    try:
        # A transaction whose lookup takes longer than the client's budget: delivered.
        r = await asyncio.wait_for(h.send(["bob@b.example"], msg(*CLAIM)), 20)
        assert r.data[0] == 250
        await until(lambda: all(x.closed_after is not None for x in slow), BUDGET + 5,
                    "the slow clients dropped")
        assert min(x.closed_after for x in slow) >= BUDGET - 0.1
        assert b"354 " in data.received
        assert len(h.sink.got) == 1                  # nothing of the dripped message
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        for d in drips:
            d.cancel()
        await close_all(slow)
