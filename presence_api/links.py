"""Recipient links: `<public_url>/c/<token>`, the credential of one recipient of one mail.

    token = base64url( HMAC-SHA256(link key, "mailtalk-link-v1|" mail_id "|" recipient)[:24] )

192 bits nobody can compute without the site key. The token is deterministic, so the
same (mail, recipient) asked twice gets the same link; the store keeps its SHA-256
with the mail, the recipient and the expiry. Opening a link checks both: the stored
row (expiry) and that the HMAC over the row's mail and recipient is this very token,
so no edit of a token or of a row turns one recipient's link into another's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from mailtalk.mailid import derive_key
from presence_api.auth import token_hash
from presence_api.store import Link, Store

TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{32}")
LINK_PATH = "/c/"


@dataclass(frozen=True)
class Opened:
    """The result of opening a link: the link, or why not."""
    link: Link | None
    reason: str = ""          # "" | "unknown" | "expired"


class Links:
    def __init__(self, store: Store, site_key: bytes, public_url: str,
                 lifetime_days: int) -> None:
        self.store = store
        self._key = derive_key(site_key, "link")
        self.public_url = public_url.rstrip("/")
        self.lifetime = lifetime_days * 86400

    def token(self, mail_id: str, recipient: str) -> str:
        msg = f"mailtalk-link-v1|{mail_id}|{recipient}".encode()
        mac = hmac.new(self._key, msg, hashlib.sha256).digest()[:24]
        return base64.urlsafe_b64encode(mac).decode("ascii")

    def url(self, token: str) -> str:
        return f"{self.public_url}{LINK_PATH}{token}"

    def record(self, token: str, mail_id: str, recipient: str, now: float) -> Link:
        """The row to store for a new link (the store keeps the hash, not the token)."""
        return Link(token_hash(token), mail_id, recipient, now, now + self.lifetime)

    async def issue(self, mail_id: str, recipient: str, now: float) -> str:
        """The link URL for this recipient of this mail (the same one when asked again)."""
        token = self.token(mail_id, recipient)
        await self.store.get_or_create_link(self.record(token, mail_id, recipient, now))
        return self.url(token)

    async def open(self, token: str, now: float) -> Opened:
        if not TOKEN_RE.fullmatch(token):
            return Opened(None, "unknown")
        link = await self.store.get_link(token_hash(token))
        if link is None or not hmac.compare_digest(self.token(link.mail_id, link.recipient),
                                                   token):
            return Opened(None, "unknown")
        if now >= link.expires_at:
            return Opened(None, "expired")
        return Opened(link)
