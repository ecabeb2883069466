"""Passwords (argon2), web sessions, CSRF tokens and the failed-login limit.

The session cookie holds a random token; the store keeps only its SHA-256, so a
leaked database holds no usable session. A CSRF token is an HMAC of the session
token (or, before log-in, of a random pre-session cookie): a form from another
site cannot know it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable
from typing import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from mailtalk.mailid import derive_key
from presence_api.auth_external import PasswordCheck
from presence_api.ratelimit import RateLimiter
from presence_api.store import Store

log = logging.getLogger("mailtalk.presence.auth")

SESSION_COOKIE = "mt_session"
PRE_COOKIE = "mt_pre"        # before log-in: what the log-in form's CSRF token is bound to
BROWSER_COOKIE = "mt_browser"   # link pages: tells one browser from another (chat.py)
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024

_hasher = PasswordHasher()
# Verified against when the account does not exist, so that an unknown account
# costs the same time as a wrong password. Made at first use, not at import (the
# `mailtalk user` command never needs it).
_dummy_hash: str | None = None


def _dummy() -> str:
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash(secrets.token_urlsafe(16))
    return _dummy_hash


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password_strength(password: str) -> str | None:
    """None if acceptable, else why not."""
    if len(password) < MIN_PASSWORD_CHARS:
        return f"a password needs at least {MIN_PASSWORD_CHARS} characters"
    if len(password) > MAX_PASSWORD_CHARS:
        return f"a password may have at most {MAX_PASSWORD_CHARS} characters"
    return None


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _dummy(), password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


ACCOUNT_SLOW_DOWN = 1.0        # seconds before each log-in answer of a guessed-at account
# Per (account, client address): failures past FREE_FAILURES delay that pair's next
# answers by 0.5 s, 1 s, 2 s ... (at most PAIR_DELAY_MAX); a success or FAILURE_MEMORY
# quiet seconds forget them. A typo costs nothing; a guesser on one address gets slower
# at each try before the per-minute block.
FREE_FAILURES = 3
PAIR_DELAY_FIRST = 0.5
PAIR_DELAY_MAX = 8.0           # well inside the request timeout (30 s)
FAILURE_MEMORY = 900.0


class GrowingDelay:
    """Failures per key, and the delay they earn: doubling, capped, forgotten."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._fails: dict[str, tuple[int, float]] = {}     # key -> (count, last failure)

    def delay(self, key: str) -> float:
        count, last = self._fails.get(key, (0, 0.0))
        if count <= FREE_FAILURES or self._clock() - last > FAILURE_MEMORY:
            return 0.0
        return min(PAIR_DELAY_FIRST * 2 ** (count - FREE_FAILURES - 1), PAIR_DELAY_MAX)

    def failed(self, key: str) -> None:
        now = self._clock()
        count, last = self._fails.get(key, (0, now))
        if now - last > FAILURE_MEMORY:
            count = 0
        self._fails[key] = (count + 1, now)
        if len(self._fails) > 100_000:        # bounded memory under a spray of keys
            cutoff = now - FAILURE_MEMORY
            self._fails = {k: v for k, v in self._fails.items() if v[1] > cutoff}

    def succeeded(self, key: str) -> None:
        self._fails.pop(key, None)


EXTERNAL = "!external"          # password_hash of an account whose password the mail
                               # server checks (auth_external): no local password matches


class Auth:
    def __init__(self, store: Store, site_key: bytes, session_lifetime: float,
                 attempts_per_minute: int, clock: Callable[[], float], *,
                 external: PasswordCheck | None = None, domains: tuple[str, ...] = (),
                 create_account: Callable[[str, str, float], Awaitable[bool]] | None = None
                 ) -> None:
        """`external`: the site's mail server checks passwords ([presence] auth); an
        account of one of `domains` is then made (`create_account`) at its first log-in."""
        self.store = store
        self._external = external
        self._domains = {d.lower() for d in domains}
        self._create = create_account
        self._csrf_key = derive_key(site_key, "csrf")
        self.session_lifetime = session_lifetime
        self._clock = clock
        # Failed log-ins block only the pair (account, client address) that failed: a
        # correct password is never refused because of others' failures. A guesser
        # spread over many addresses is slowed per account instead (ACCOUNT_SLOW_DOWN
        # before each answer while the account's failures are over the limit).
        self.fail_pair = RateLimiter(attempts_per_minute, clock=clock)
        self.fail_account = RateLimiter(attempts_per_minute, clock=clock)
        self._pair_delay = GrowingDelay(clock)

    def login_blocked(self, ip: str, account: str) -> bool:
        return self.fail_pair.blocked(f"{account}\n{ip}")

    async def login(self, ip: str, account: str, password: str) -> str | None:
        """A new session token, or None (wrong account or password: one answer).
        auth_external.Unavailable when the mail server cannot say: not a failure."""
        pair = f"{account}\n{ip}"
        wait = self._pair_delay.delay(pair)
        if self.fail_account.blocked(account):
            wait = max(wait, ACCOUNT_SLOW_DOWN)
        if wait:
            await asyncio.sleep(wait)
        ok = await self._password_ok(account, password)     # Unavailable goes up
        if not ok:
            self.fail_pair.hit(pair)
            self.fail_account.hit(account)
            self._pair_delay.failed(pair)
            log.info("failed log-in for %s from %s", account, ip)
            return None
        self._pair_delay.succeeded(pair)
        token = secrets.token_urlsafe(32)
        await self.store.create_session(token_hash(token), account,
                                        self._clock() + self.session_lifetime)
        log.info("log-in: %s from %s", account, ip)
        return token

    async def _password_ok(self, account: str, password: str) -> bool:
        if self._external is None:
            acct = await self.store.get_account(account)
            return await asyncio.get_running_loop().run_in_executor(
                None, _verify, acct.password_hash if acct else None, password)
        if account.rpartition("@")[2].lower() not in self._domains:
            return False                 # never asks the mail server for other domains
        if not await self._external.check(account, password):
            return False
        create = self._create or self.store.create_account
        if await create(account, EXTERNAL, self._clock()):
            log.info("account %s made at its first log-in", account)
        return True

    async def session_account(self, token: str | None) -> str | None:
        if not token or len(token) > 128:
            return None
        return await self.store.get_session(token_hash(token), self._clock())

    async def logout(self, token: str | None) -> None:
        if token:
            await self.store.delete_session(token_hash(token))

    def csrf_token(self, bound_to: str) -> str:
        return hmac.new(self._csrf_key, bound_to.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, bound_to: str | None, given: str | None) -> bool:
        if not bound_to or not given:
            return False
        return hmac.compare_digest(self.csrf_token(bound_to), given)
