"""Recipient link tokens: `<public_url>/c/<token>`, the credential of one recipient of
one mail. Made and checked here; opened by the presence service (presence_api/links.py).

Self-verifying, so that a lookup (one per delivered mail) stores nothing:

    token = base64url( 2 | mail_id (33 raw bytes) | len(sender) | sender | recipient | MAC )
    MAC   = HMAC-SHA256(derive_key(site_key, "link"), "mailtalk-link-v2|" + all before it)[:16]

`sender` is the account the Mail-ID was verified for (lowercased), `recipient` the
address with its domain lowercased, both UTF-8. The token is deterministic (the same
mail and recipient always get the same link) and expires `link_lifetime_days` after
the Mail-ID was issued (its issue time is inside it), so nothing about a link is
stored until it is opened. Any altered byte fails the MAC: no edit turns one
recipient's link into another's, or into a link of another mail.

The sender is inside the token because a link may be opened before the milter's record
of the mail arrived: opening then creates a placeholder mail row, which needs the
sender. Once the record is stored, a link opens only for one of its recipients.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from mailtalk.mailid import MailIds, b64url, derive_key, unb64url
from mailtalk.online_header import CHAT_URL_MAX

LINK_PATH = "/c/"
_VERSION = 2
_MAIL_ID_BYTES = 33        # what a 44-character Mail-ID decodes to (mailtalk/mailid.py)
_MAC_BYTES = 16
_PREFIX = b"mailtalk-link-v2|"
# RFC 5321 caps a path at 256 octets: 254 for the address. Longer ones get no link.
ADDRESS_MAX_BYTES = 254
# A link longer than the receiving hook accepts (online_header.CHAT_URL_MAX) is not issued.
URL_MAX = CHAT_URL_MAX
_MIN_BYTES = 1 + _MAIL_ID_BYTES + 1 + 1 + 1 + _MAC_BYTES
_MAX_BYTES = 1 + _MAIL_ID_BYTES + 1 + 2 * ADDRESS_MAX_BYTES + _MAC_BYTES
_MIN_CHARS, _MAX_CHARS = -(-_MIN_BYTES * 4 // 3), -(-_MAX_BYTES * 4 // 3)   # unpadded
TOKEN_RE = re.compile(rf"[A-Za-z0-9_-]{{{_MIN_CHARS},{_MAX_CHARS}}}")


@dataclass(frozen=True)
class Link:
    """What a verified token names."""
    mail_id: str
    sender: str
    recipient: str
    expires_at: float


class LinkTokens:
    def __init__(self, site_key: bytes, public_url: str, lifetime_days: int) -> None:
        self._key = derive_key(site_key, "link")
        self._issued = MailIds(site_key, lifetime_days)       # issued_at only: no key use
        self.public_url = public_url.rstrip("/")
        self.lifetime = lifetime_days * 86400

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, _PREFIX + body, hashlib.sha256).digest()[:_MAC_BYTES]

    def token(self, mail_id: str, sender: str, recipient: str) -> str | None:
        """The token for this recipient of this (verified) mail; None if the addresses
        are too long for a link or the Mail-ID is not one of ours in form."""
        raw = unb64url(mail_id)
        s, r = sender.encode("utf-8"), recipient.encode("utf-8")
        if (raw is None or len(raw) != _MAIL_ID_BYTES or not 0 < len(s) <= ADDRESS_MAX_BYTES
                or not 0 < len(r) <= ADDRESS_MAX_BYTES):
            return None
        body = bytes([_VERSION]) + raw + bytes([len(s)]) + s + r
        return b64url(body + self._mac(body))

    def url(self, mail_id: str, sender: str, recipient: str) -> str | None:
        token = self.token(mail_id, sender, recipient)
        if token is None:
            return None
        url = f"{self.public_url}{LINK_PATH}{token}"
        return url if len(url) <= URL_MAX else None

    def verify(self, token: str, now: float) -> tuple[Link | None, str]:
        """(link, "") for a genuine unexpired token, else (None, "unknown" | "expired").
        No I/O."""
        raw = unb64url(token) if TOKEN_RE.fullmatch(token) else None
        # One spelling per link: base64's last character can carry unused bits, and a
        # token that differs only there must not open (re-encoding gives the one spelling).
        if (raw is None or not _MIN_BYTES <= len(raw) <= _MAX_BYTES or raw[0] != _VERSION
                or b64url(raw) != token):
            return None, "unknown"
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(self._mac(body), mac):
            return None, "unknown"
        mail_id = b64url(body[1:1 + _MAIL_ID_BYTES])
        n = body[1 + _MAIL_ID_BYTES]
        rest = body[2 + _MAIL_ID_BYTES:]
        try:      # the MAC holds, so these are what token() wrote; decode strictly anyway
            sender, recipient = rest[:n].decode("utf-8"), rest[n:].decode("utf-8")
        except UnicodeDecodeError:
            return None, "unknown"
        issued = self._issued.issued_at(mail_id)
        if issued is None or len(rest) <= n:
            return None, "unknown"
        link = Link(mail_id, sender, recipient, issued + self.lifetime)
        if now >= link.expires_at:
            return None, "expired"
        return link, ""
