"""Opening a recipient link: the token checked (mailtalk/links.py), then its mail."""

from __future__ import annotations

from dataclasses import dataclass

from mailtalk.links import LINK_PATH, Link, LinkTokens
from presence_api.store import Mail, Store

__all__ = ["LINK_PATH", "Link", "Links", "Opened"]


@dataclass(frozen=True)
class Opened:
    """The result of opening a link: the link and its mail (stored, or a placeholder not
    stored yet), or why not."""
    link: Link | None
    mail: Mail | None = None
    reason: str = ""          # "" | "unknown" | "expired"




class Links(LinkTokens):
    def __init__(self, store: Store, site_key: bytes, public_url: str,
                 lifetime_days: int) -> None:
        super().__init__(site_key, public_url, lifetime_days)
        self.store = store

    async def open(self, token: str, now: float, store_it: bool = False) -> Opened:
        """Verify the token and find its mail (one read). Once the record is stored, only
        its recipients' links open. `store_it`: create the placeholder mail row if the
        record has not arrived (the first real open is the only write a link causes)."""
        link, reason = self.verify(token, now)
        if link is None:
            return Opened(None, None, reason)
        mail = await self.store.get_mail(link.mail_id)
        if mail is None:
            if store_it:
                mail = await self.store.bind_mail(link.mail_id, link.sender, now)
            else:
                mail = Mail(link.mail_id, link.sender, recorded=False, created_at=now)
        if mail.account != link.sender or (
                mail.recorded and link.recipient.lower()
                not in {r.lower() for r in mail.recipients}):
            return Opened(None, None, "unknown")
        return Opened(link, mail)
