"""The per-site cap and breaker of the lookup client (mailtalk.site_breaker), on a
fake clock."""

from __future__ import annotations

from mailtalk.site_breaker import COOL_DOWN, FAILURES, PROVEN_FOR, WINDOW, SiteBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _proven(b: SiteBreaker, domain: str) -> None:
    assert b.admit(domain) is None
    b.done(domain, failed=False)


def test_a_busy_site_that_answers_is_never_capped() -> None:
    clock = Clock()
    b = SiteBreaker(cap=2, slow_after=1.0, clock=clock)
    _proven(b, "busy.test")
    for _ in range(10):                     # many at once, none waiting long yet
        assert b.admit("busy.test") is None
    assert b.refused == {"cap": 0, "open": 0}


def test_a_site_not_heard_from_gets_half_the_cap_until_it_answers() -> None:
    clock = Clock()
    b = SiteBreaker(cap=4, slow_after=1.0, clock=clock)
    assert b.admit("new.test") is None and b.admit("new.test") is None
    assert "not answered lately" in (b.admit("new.test") or "")
    b.done("new.test", failed=False)        # it answers: queued lookups are fine now
    for _ in range(6):
        assert b.admit("new.test") is None
    clock.now += PROVEN_FOR + 1             # long silent: half the cap again
    for _ in range(7):
        b.done("new.test", failed=False)
    clock.now += PROVEN_FOR + 1
    assert b.admit("new.test") is None and b.admit("new.test") is None
    assert "not answered lately" in (b.admit("new.test") or "")


def test_past_the_cap_a_slow_site_answers_at_once() -> None:
    clock = Clock()
    b = SiteBreaker(cap=2, slow_after=1.0, clock=clock)
    _proven(b, "slow.test")
    assert b.admit("slow.test") is None and b.admit("slow.test") is None
    clock.now += 1.0                        # the oldest has waited slow_after
    assert "slow site" in (b.admit("slow.test") or "")
    assert b.admit("other.test") is None    # another site is not held back
    b.done("slow.test", failed=False)
    b.done("slow.test", failed=False)
    assert b.admit("slow.test") is None
    assert b.refused == {"cap": 1, "open": 0}


def test_failures_open_the_breaker_then_one_probe_decides() -> None:
    clock = Clock()
    b = SiteBreaker(cap=100, slow_after=1.0, clock=clock)
    for _ in range(FAILURES):
        assert b.admit("tarpit.test") is None
        b.done("tarpit.test", failed=True)
    assert "breaker open" in (b.admit("tarpit.test") or "")
    assert b.admit("healthy.test") is None
    clock.now += COOL_DOWN
    assert b.admit("tarpit.test") is None              # the probe
    assert "breaker open" in (b.admit("tarpit.test") or "")     # one probe at a time
    b.done("tarpit.test", failed=True)                 # fails: open again
    assert "breaker open" in (b.admit("tarpit.test") or "")
    clock.now += COOL_DOWN
    assert b.admit("tarpit.test") is None
    b.done("tarpit.test", failed=False)                # answers: closed
    assert b.admit("tarpit.test") is None


def test_failures_spread_over_more_than_the_window_do_not_open_it() -> None:
    clock = Clock()
    b = SiteBreaker(cap=100, slow_after=1.0, clock=clock)
    for _ in range(3 * FAILURES):
        assert b.admit("flaky.test") is None
        b.done("flaky.test", failed=True)
        clock.now += WINDOW / (FAILURES - 1) + 0.1
    assert b.admit("flaky.test") is None
    assert b.refused == {"cap": 0, "open": 0}
