"""Who is online: WebSocket connections per account, idle time and chosen mode.

A user is online while at least one of their pages holds a WebSocket; aiohttp's
heartbeat (a ping every `heartbeat_seconds`, the page must answer within half of
that) closes the socket of a page that vanished without closing, so it drops out
within 1.5 x heartbeat_seconds (at most 2 x with the sweep). Away: no input on any
page for `idle_away_seconds`. Busy and appear-offline are chosen modes (stored).

In one process this map is the truth. With several processes (`[presence] redis`)
each process keeps its own pages here and counts the others' from what they publish
each heartbeat (`remote`, presence_api/bus.py); while that bus is down, a lookup
cannot tell "offline" from "on another process" and answers `unknown`
(`answer_status`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any, Callable

from aiohttp import web

log = logging.getLogger("mailtalk.presence")

STATUSES = ("online", "away", "busy", "offline")


class Client:
    """One open page: a logged-in user's ("user") or a link recipient's ("link")."""

    # Thousands are open at once: no per-object __dict__.
    __slots__ = ("ws", "kind", "identity", "mail_id", "session_hash", "link_expires",
                 "last_input", "watching", "opened", "browser")

    def __init__(self, ws: web.WebSocketResponse, kind: str, identity: str, now: float,
                 mail_id: str | None = None, session_hash: str | None = None,
                 link_expires: float = 0.0) -> None:
        self.ws = ws
        self.kind = kind
        self.identity = identity          # account (user) or recipient address (link)
        self.mail_id = mail_id            # the one room a link page may use
        self.session_hash = session_hash
        self.link_expires = link_expires
        self.last_input = now
        self.watching: str | None = None  # the sender whose presence a link page shows
        self.opened = False               # a link page said "open" (once per socket)
        self.browser = ""                 # link pages: which browser (hash of its cookie)

    async def send_raw(self, data: str) -> None:
        if self.ws.closed:
            return
        try:
            await self.ws.send_str(data)
        except (ConnectionError, RuntimeError):
            pass   # the page is going away; its handler cleans up

    async def send(self, event: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(event))


async def send_all(clients: Any, event: dict[str, Any]) -> None:
    """Serialise once, send to each (concurrently: one slow page delays no other)."""
    data = json.dumps(event)
    targets = list(clients)
    if targets:
        await asyncio.gather(*(c.send_raw(data) for c in targets))


class PresenceHub:
    def __init__(self, idle_away: float, clock: Callable[[], float]) -> None:
        self.idle_away = idle_away
        self._clock = clock
        self.clients: dict[str, set[Client]] = {}       # account -> its open pages
        self._watchers: dict[str, set[Client]] = {}     # account -> link pages showing it
        self._modes: dict[str, str] = {}                # account -> chosen mode (cache)
        self._last: dict[str, str] = {}                 # account -> last status announced
        # Other processes' pages (bus.py): account -> process -> (pages, last input,
        # mode, valid until). Empty with one process.
        self.remote: dict[str, dict[str, tuple[int, float, str, float]]] = {}
        self.publish: Callable[..., Awaitable[None]] | None = None     # the bus, if any
        self.others_known: Callable[[], bool] = lambda: True   # False: the bus is down
        self._others_known_before = True                        # at the last sweep

    def status(self, account: str, mode: str | None = None) -> str:
        mode = mode or self.mode(account)
        conns = self.clients.get(account)
        others = self._remote_pages(account) if self.remote else []
        if mode == "offline" or not (conns or others):
            return "offline"
        if mode == "busy":
            return "busy"
        now = self._clock()
        inputs = [c.last_input for c in conns or ()] + [last for _, last, _ in others]
        if all(now - t >= self.idle_away for t in inputs):
            return "away"
        return "online"

    def answer_status(self, account: str, mode: str | None = None) -> str:
        """The status others are given (lookups, link pages): `status`, except that
        while other processes' pages cannot be known (the bus down) no page here is
        `unknown`, not `offline` (a chosen appear-offline stays `offline`)."""
        status = self.status(account, mode)
        if status == "offline" and not self.others_known() \
                and (mode or self.mode(account)) != "offline":
            return "unknown"
        return status

    def _remote_pages(self, account: str) -> list[tuple[int, float, str]]:
        now = self._clock()
        return [(n, last, m) for n, last, m, until in self.remote.get(account, {}).values()
                if n > 0 and until > now]

    def mode(self, account: str) -> str:
        if account in self._modes:
            return self._modes[account]
        others = self._remote_pages(account) if self.remote else []
        return others[0][2] if others else "auto"

    def pages_of(self, account: str) -> tuple[int, float, str]:
        """This process's pages of `account`: (count, last input, mode), for the others."""
        conns = self.clients.get(account, set())
        return (len(conns), max((c.last_input for c in conns), default=0.0),
                self._modes.get(account, "auto"))

    async def share(self, account: str) -> None:
        """This process's pages of `account`, for the others (bus.py), at once."""
        if self.publish is None:
            return
        pages, last_input, mode = self.pages_of(account)
        await self.publish("presence", account=account, pages=pages, last_input=last_input,
                           mode=mode)

    async def heard(self, proc: str, account: str, pages: int, last_input: float, mode: str,
                    valid_for: float) -> None:
        """Another process's pages of `account`: counted, and this process's pages told
        of a change."""
        self.remote.setdefault(account, {})[proc] = (pages, last_input, mode,
                                                     self._clock() + valid_for)
        if pages == 0:
            del self.remote[account][proc]
            if not self.remote[account]:
                del self.remote[account]
        await self.announce(account)

    async def announce(self, account: str, force: bool = False, share: bool = False) -> None:
        if share:
            await self.share(account)
        new = self.status(account)
        if not force and self._last.get(account, "offline") == new:
            return
        self._last[account] = new
        log.debug("%s is %s", account, new)
        await send_all(self._watchers.get(account, ()),
                       {"type": "presence", "account": account,
                        "status": self.answer_status(account)})
        await send_all(self.clients.get(account, ()),
                       {"type": "presence", "account": account, "status": new,
                        "mode": self.mode(account), "self": True})

    def add(self, client: Client, mode: str) -> None:
        """Count the page in; the caller greets it, then calls announce()."""
        self._modes[client.identity] = mode
        self.clients.setdefault(client.identity, set()).add(client)

    async def remove(self, client: Client) -> None:
        self.unwatch(client)
        if client.kind != "user":
            return
        conns = self.clients.get(client.identity)
        if conns is not None:
            conns.discard(client)
            if not conns:
                del self.clients[client.identity]
        await self.announce(client.identity, share=True)
        if client.identity not in self.clients:
            self._last.pop(client.identity, None)
            self._modes.pop(client.identity, None)

    async def activity(self, client: Client) -> None:
        client.last_input = self._clock()
        if client.kind == "user":
            await self.announce(client.identity, share=True)

    async def set_mode(self, account: str, mode: str) -> None:
        self._modes[account] = mode
        await self.announce(account, force=True, share=True)

    def watch(self, client: Client, account: str) -> None:
        self.unwatch(client)
        client.watching = account
        self._watchers.setdefault(account, set()).add(client)

    def unwatch(self, client: Client) -> None:
        if client.watching:
            w = self._watchers.get(client.watching)
            if w is not None:
                w.discard(client)
                if not w:
                    del self._watchers[client.watching]
            client.watching = None

    async def sweep(self) -> None:
        """Announce online -> away changes that no event caused (time passing), and
        forget other processes' pages that were not refreshed (a process gone)."""
        now = self._clock()
        for account, procs in list(self.remote.items()):
            for proc, (_, _, _, until) in list(procs.items()):
                if until <= now:
                    del procs[proc]
            if not procs:
                del self.remote[account]
        for account in set(self.clients) | set(self.remote) | set(self._last):
            await self.announce(account)
        known = self.others_known()
        if known != self._others_known_before:       # the bus went down or came back
            self._others_known_before = known
            for account in list(self._watchers):
                await self.announce(account, force=True)

    async def run_sweeper(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("presence sweep failed")
