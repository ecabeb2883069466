"""A slow sender site may slow only its own mails.

A domain whose presence service never answers (or answers a byte a second) would hold
a filter slot for the whole lookup timeout for every mail that claims it, and with the
MTA's few delivery slots full of them, every other site's mail waits too. Per sender
site (the account's domain) this keeps:

- a cap on lookups in flight: past it, that site's mails get `unknown` at once
  instead of waiting in a queue behind it. A site that answered within PROVEN_FOR
  seconds is capped only once it is slow (its oldest lookup in flight has waited
  `slow_after` seconds, or it failed lately): however busy, its lookups queue for a
  connection as before. A site not heard from lately gets half the cap until it
  answers: a flood from a new tarpit site then holds at most that many of the MTA's
  delivery slots (bench/tarpit_bench.py);
- a breaker: after FAILURES timeouts or connection failures within WINDOW seconds, the
  site's mails get `unknown` at once for COOL_DOWN seconds; then one lookup goes
  through as a probe: its success closes the breaker, its failure opens it again.

A refusal from the site (an answer) is no failure: the site is up.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("mailtalk.lookup")

FAILURES = 5          # timeouts or connection failures ...
WINDOW = 60.0         # ... within this many seconds open the breaker
COOL_DOWN = 30.0      # seconds of `unknown` at once before a probe
PROVEN_FOR = 600.0    # an answer lets the site's lookups queue for this long
MAX_SITES = 10_000    # sites remembered (bounded memory under a spray of domains)


@dataclass
class _Site:
    started: deque[float] = field(default_factory=deque)   # lookups in flight (FIFO)
    failures: deque[float] = field(default_factory=deque)
    open_until: float = 0.0       # 0: closed
    probing: bool = False
    proven_until: float = 0.0     # it answered lately: no cap while it is not slow


class SiteBreaker:
    def __init__(self, cap: int, slow_after: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cap = cap
        self.slow_after = slow_after
        self._clock = clock
        self._sites: dict[str, _Site] = {}
        self.refused: dict[str, int] = {"cap": 0, "open": 0}    # counted, never silent

    def admit(self, domain: str) -> str | None:
        """None: ask the site (then call `done`); else why its mail gets `unknown` now."""
        now = self._clock()
        site = self._site(domain, now)
        if site.open_until:
            if now < site.open_until or site.probing:
                self.refused["open"] += 1
                return f"{domain}: site breaker open (its service failed {FAILURES} times)"
            site.probing = True                   # half-open: this one is the probe
        elif now >= site.proven_until and len(site.started) >= max(1, self.cap // 2):
            self.refused["cap"] += 1
            return (f"{domain}: {len(site.started)} lookups already in flight to a site "
                    f"that has not answered lately (the per-site cap)")
        elif len(site.started) >= self.cap and (
                site.failures or now - site.started[0] >= self.slow_after):
            self.refused["cap"] += 1
            return (f"{domain}: {len(site.started)} lookups already in flight to a slow "
                    f"site (the per-site cap)")
        site.started.append(now)
        return None

    def _site(self, domain: str, now: float) -> _Site:
        site = self._sites.get(domain)
        if site is None:
            if len(self._sites) >= MAX_SITES:     # forget the idle ones
                self._sites = {d: s for d, s in self._sites.items()
                               if s.started or s.open_until or s.proven_until > now}
            site = self._sites[domain] = _Site()
        return site

    def done(self, domain: str, failed: bool) -> None:
        site = self._sites[domain]
        site.started.popleft()        # the oldest: close enough, lookups end in order
        now = self._clock()
        if site.probing:
            site.probing = False
            if failed:
                site.open_until = now + COOL_DOWN
                log.warning("%s: probe failed: site breaker open for %g s", domain, COOL_DOWN)
            else:
                site.open_until = 0.0
                site.failures.clear()
                site.proven_until = now + PROVEN_FOR
                log.warning("%s: probe answered: site breaker closed", domain)
        elif not failed:
            site.proven_until = now + PROVEN_FOR
        else:
            site.failures.append(now)
            while site.failures and site.failures[0] <= now - WINDOW:
                site.failures.popleft()
            if len(site.failures) >= FAILURES and not site.open_until:
                site.open_until = now + COOL_DOWN
                log.warning("%s: %d lookups failed within %g s: site breaker open for %g s "
                            "(its mails get unknown at once)", domain, len(site.failures),
                            WINDOW, COOL_DOWN)
