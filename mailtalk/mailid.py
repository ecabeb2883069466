"""Mail-IDs, and the site key they are made with.

A Mail-ID is unguessable and self-verifying, so the presence service can tell one
it issued for an account from a forged one before the milter's record of the mail
has even arrived (the outbox hands records over asynchronously):

    token = base64url( version(1) | issued_at(4, unix seconds) | random(12) | tag(16) )
    tag   = HMAC-SHA256(mail-id key, "mailtalk-mailid-v1" | account | first 17 bytes)[:16]

33 bytes give 44 characters of A-Z a-z 0-9 - _ (the header allows 22 to 64). The account is
inside the MAC, so a Mail-ID of one account is worthless for another. It expires
`mail_id_lifetime_days` after issue (default 30).

The site key is 32 random bytes in `[site] secret_file` (mode 0600), created at first
start; the milter and the presence service of one site share it. Purpose-specific keys
are derived from it with HMAC, so one secret never serves two jobs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import struct
import time
from pathlib import Path
from typing import Callable

from mailtalk.constants import MAIL_ID_PATTERN

log = logging.getLogger("mailtalk.mailid")

SITE_KEY_BYTES = 32
_VERSION = 1
_HEAD = struct.Struct(">BI")        # version, issued_at
_RANDOM_BYTES = 12
_TAG_BYTES = 16
_TOKEN_BYTES = _HEAD.size + _RANDOM_BYTES + _TAG_BYTES
_MAIL_ID_RE = re.compile(MAIL_ID_PATTERN)


class SiteKeyError(Exception):
    pass


def load_or_create_site_key(path: Path) -> bytes:
    """Read the site key; create it (0600, parents 0700) if the file does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = secrets.token_bytes(SITE_KEY_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:          # another process of this site won the race
            return load_or_create_site_key(path)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key
    except OSError as e:
        raise SiteKeyError(f"{path}: cannot read the site key: {e.strerror}") from None
    _owner_only(path)
    if len(data) != SITE_KEY_BYTES:
        raise SiteKeyError(f"{path}: the site key must be exactly {SITE_KEY_BYTES} bytes")
    return data


def _owner_only(path: Path) -> None:
    """A key readable by group or others is tightened to 0600, and the log says so."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, mode & 0o700)
            log.warning("%s: the site key was readable by others (mode %o): now %o",
                        path, mode, mode & 0o700)
    except OSError as e:
        log.warning("%s: cannot check the site key's mode: %s", path, e.strerror)


def derive_key(site_key: bytes, purpose: str) -> bytes:
    """A key for one purpose only ("mail-id", "outbox-api", "link", "session", ...)."""
    return hmac.new(site_key, b"mailtalk-derive-v1|" + purpose.encode(), hashlib.sha256).digest()


def digest_token(site_key: bytes, message_id: str) -> str:
    """X-Mailtalk-Digest of the presence service's digest with this Message-ID: the
    sending milter leaves the chat link in a mail that carries a valid one."""
    return hmac.new(derive_key(site_key, "digest"), message_id.strip().encode(),
                    hashlib.sha256).hexdigest()


def is_digest(site_key: bytes, message_id: str, token: str) -> bool:
    return bool(message_id.strip()) and hmac.compare_digest(
        digest_token(site_key, message_id), token.strip())


def outbox_api_token(site_key: bytes) -> str:
    """The bearer token with which this site's milter hands records to its presence service."""
    return derive_key(site_key, "outbox-api").hex()


def b64url(b: bytes) -> str:
    """Unpadded base64url: the alphabet of Mail-IDs and link tokens (A-Z a-z 0-9 - _)."""
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def unb64url(s: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except (ValueError, TypeError):
        return None


def is_well_formed(token: str) -> bool:
    """The header's syntax (22 to 64 of A-Z a-z 0-9 - _), nothing more."""
    return bool(_MAIL_ID_RE.fullmatch(token))


class MailIds:
    """Issues and verifies Mail-IDs of one site."""

    def __init__(self, site_key: bytes, lifetime_days: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._key = derive_key(site_key, "mail-id")
        self._lifetime = lifetime_days * 86400
        self._clock = clock

    def _tag(self, account: str, head: bytes) -> bytes:
        msg = b"mailtalk-mailid-v1|" + account.lower().encode("utf-8") + b"|" + head
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:_TAG_BYTES]

    def issue(self, account: str) -> str:
        head = _HEAD.pack(_VERSION, int(self._clock())) + secrets.token_bytes(_RANDOM_BYTES)
        return b64url(head + self._tag(account, head))

    def verify(self, account: str, token: str) -> bool:
        """True only for a Mail-ID this site issued for `account` that has not expired.

        Every rejection path computes one HMAC, so a forged, a wrong and an unknown
        account's Mail-ID cost the same time.
        """
        raw = unb64url(token) if is_well_formed(token) else None
        if raw is None or len(raw) != _TOKEN_BYTES:
            raw = bytes(_TOKEN_BYTES)      # still spend the HMAC: same time as a real check
        head, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        good = hmac.compare_digest(self._tag(account, head), tag)
        version, issued = _HEAD.unpack_from(head)
        age = self._clock() - issued
        return good and version == _VERSION and -300 <= age <= self._lifetime

    def issued_at(self, token: str) -> float | None:
        raw = unb64url(token) if is_well_formed(token) else None
        if raw is None or len(raw) != _TOKEN_BYTES:
            return None
        return float(_HEAD.unpack_from(raw)[1])

    def expires_at(self, token: str) -> float | None:
        issued = self.issued_at(token)
        return None if issued is None else issued + self._lifetime
