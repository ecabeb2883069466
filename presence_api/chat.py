"""Rooms, messages and fan-out: one room per Mail-ID.

Members of a room: the mail's sender (all of their logged-in pages) and each
recipient who opened their link (their link pages). Every frame names its room and
is authorized here for the page that sent it.

Fan-out is in-process (`deliver`): the sender's pages and the room's link pages of
this process. With several processes, `deliver` publishes to Redis channels
`user:<account>` and `room:<mail_id>` instead, and each process forwards what it
receives to its own pages; nothing else here changes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, Callable

from mailtalk import metrics
from presence_api.presence import Client, PresenceHub, send_all
from presence_api.ratelimit import RateLimiter
from presence_api.store import Mail, Message, Store

log = logging.getLogger("mailtalk.presence.chat")

HISTORY_LIMIT = 500      # messages sent to a page when it enters a room


def mail_view(mail: Mail, for_sender: bool) -> dict[str, Any]:
    """What a page may show of a mail; recipients never see the envelope recipients
    (that would reveal Bcc), the sender does (seed claim 4)."""
    view: dict[str, Any] = {"mail_id": mail.mail_id, "sender": mail.account,
                            "recorded": mail.recorded, "subject": mail.subject,
                            "date": mail.date, "body_text": mail.body_text,
                            "names": mail.names}
    if for_sender:
        view["recipients"] = list(mail.recipients)
    return view


def message_view(m: Message) -> dict[str, Any]:
    return {"type": "message", "mail_id": m.mail_id, "id": m.id, "author": m.author,
            "text": m.text, "ts": m.ts}


MAX_BROWSERS_KEPT = 8      # per link: enough to tell "more than one"; bounded memory


class ChatError(Exception):
    """A frame refused; str() is the code sent back to the page."""


class ChatHub:
    def __init__(self, store: Store, presence: PresenceHub, clock: Callable[[], float],
                 max_chars: int, messages_per_minute: int) -> None:
        self.store = store
        self.presence = presence
        self._clock = clock
        self.max_chars = max_chars
        self._rooms: dict[str, set[Client]] = {}    # mail_id -> link pages in it
        # Per writer (an account or a link's recipient): nobody can flood a room.
        self.flood = RateLimiter(messages_per_minute, clock=clock)
        # (mail_id, recipient) -> the browsers (cookie hashes) that opened that link. A
        # link opened from more than one browser is marked to everyone in the room: a
        # forwarded mail or a leaked header may put the link in another's hands. In
        # memory: a restart forgets it, as a page reload after it would tell it again.
        self._browsers: dict[tuple[str, str], set[str]] = {}
        self.publish: Callable[..., Awaitable[None]] | None = None     # the bus, if any

    # --- membership of pages

    def attach(self, client: Client) -> None:
        if client.kind == "link" and client.mail_id:
            self._rooms.setdefault(client.mail_id, set()).add(client)

    def detach(self, client: Client) -> None:
        if client.kind == "link" and client.mail_id:
            room = self._rooms.get(client.mail_id)
            if room is not None:
                room.discard(client)
                if not room:
                    del self._rooms[client.mail_id]

    def link_clients(self) -> list[Client]:
        return [c for room in self._rooms.values() for c in room]

    async def authorize(self, client: Client, mail_id: Any) -> Mail:
        """The room's mail if this page may use it; else ChatError("forbidden")."""
        if not isinstance(mail_id, str) or not mail_id or len(mail_id) > 64:
            raise ChatError("forbidden")
        if client.kind == "link" and mail_id != client.mail_id:
            raise ChatError("forbidden")
        mail = await self.store.get_mail(mail_id)
        if mail is None or (client.kind == "user" and not await self.may_use(client.identity,
                                                                            mail)):
            raise ChatError("forbidden")
        return mail

    async def may_use(self, account: str, mail: Mail) -> bool:
        """A logged-in account may use the rooms of its own mails, and a room it joined
        through its link (a recipient with an account here may log in instead)."""
        if mail.account == account:
            return True
        return account in {m.lower() for m in await self.store.members(mail.mail_id)}

    async def deliver(self, mail: Mail, event: dict[str, Any]) -> None:
        """To the pages in the room of `mail`: its sender's, its link pages, and those
        of members logged in here; and, with several processes, to theirs (bus.py)."""
        clients = self.presence.clients
        members: list[str] = []
        # Members with an account here may be logged in: only then ask the store.
        if self.publish is not None or len(clients) > (1 if mail.account in clients else 0):
            members = await self.store.members(mail.mail_id)
        await self.deliver_here(mail.mail_id, mail.account, members, event)
        if self.publish is not None:
            await self.publish("deliver", mail_id=mail.mail_id, account=mail.account,
                               members=members, event=event)

    async def deliver_here(self, mail_id: str, account: str, members: list[str],
                           event: dict[str, Any]) -> None:
        """To this process's pages of the room."""
        clients = self.presence.clients
        targets = set(clients.get(account, ())) | self._rooms.get(mail_id, set())
        for m in members:
            targets |= clients.get(m.lower(), set())
        await send_all(targets, event)

    async def to_user(self, account: str, event: dict[str, Any]) -> None:
        await send_all(self.presence.clients.get(account, ()), event)
        if self.publish is not None:
            await self.publish("to_user", account=account, event=event)

    async def to_room(self, mail_id: str, event: dict[str, Any]) -> None:
        await send_all(self._rooms.get(mail_id, set()), event)
        if self.publish is not None:
            await self.publish("to_room", mail_id=mail_id, event=event)

    async def mail_arrived(self, mail: Mail) -> None:
        """The record of a mail whose link was opened before it came: the pages in its
        room show it now (the sender's pages with the envelope recipients)."""
        event = {"type": "mail", "mail_id": mail.mail_id}
        await self.to_room(mail.mail_id, {**event, "mail": mail_view(mail, False)})
        await self.to_user(mail.account, {**event, "mail": mail_view(mail, True)})

    # --- actions

    async def snapshot(self, client: Client, mail: Mail) -> dict[str, Any]:
        msgs = await self.store.messages(mail.mail_id, HISTORY_LIMIT)
        sender = client.kind == "user" and client.identity == mail.account
        return {"type": "room", "mail": mail_view(mail, sender),
                "members": await self.store.members(mail.mail_id),
                "shared": self.shared(mail.mail_id),
                "messages": [message_view(m) for m in msgs],
                "sender_status": self.presence.answer_status(mail.account),
                "you": client.identity}

    async def post(self, client: Client, mail_id: Any, text: Any) -> Message:
        mail = await self.authorize(client, mail_id)
        if not isinstance(text, str) or not text.strip():
            raise ChatError("empty")
        if len(text) > self.max_chars:
            raise ChatError("too_long")
        if not self.flood.hit(client.identity):
            metrics.RATE_LIMITED.labels("chat").inc()
            raise ChatError("rate_limited")
        msg = await self.store.add_message(mail.mail_id, client.identity, text.strip(),
                                           self._clock())
        metrics.CHAT_MESSAGES.inc()
        log.info("mail %s: message %d from %s", mail.mail_id, msg.id, client.identity)
        await self.deliver(mail, message_view(msg))
        return msg

    def shared(self, mail_id: str) -> list[str]:
        """The recipients whose link was opened from more than one browser."""
        return sorted(r for (m, r), seen in self._browsers.items()
                      if m == mail_id and len(seen) > 1)

    def _saw_browser(self, mail_id: str, recipient: str, browser: str) -> bool:
        """Record it; True when this makes the link's second browser."""
        seen = self._browsers.setdefault((mail_id, recipient.lower()), set())
        if browser in seen or len(seen) >= MAX_BROWSERS_KEPT:
            return False
        seen.add(browser)
        return len(seen) == 2

    async def members_event(self, mail_id: str) -> dict[str, Any]:
        return {"type": "members", "mail_id": mail_id,
                "members": await self.store.members(mail_id), "shared": self.shared(mail_id)}

    async def opened(self, mail: Mail, recipient: str, browser: str) -> None:
        """A recipient opened their link: they join the room and the sender is told at
        once. `browser`: what tells one browser from another (a hash of its cookie)."""
        first = await self.store.join(mail.mail_id, recipient, self._clock())
        second = self._saw_browser(mail.mail_id, recipient, browser)
        log.info("mail %s: link opened by %s%s%s", mail.mail_id, recipient,
                 " (joined)" if first else "",
                 " (from a second browser)" if second else "")
        # Only to the sender's pages: this view holds the envelope recipients.
        await self.to_user(mail.account, {"type": "opened", "mail_id": mail.mail_id,
                                          "recipient": recipient, "first": first,
                                          "mail": mail_view(mail, True)})
        if first or second:
            await self.deliver(mail, await self.members_event(mail.mail_id))
