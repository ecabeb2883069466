"""Several presence processes on one database: what one process's pages must hear
from another's goes over Redis (`[presence] redis`), one pub/sub channel.

Each process delivers to its own pages directly and publishes the same event with its
process id on the site's channel (`channel_for`); every other process hands it to its own pages (`on_event`). Events:

    deliver   {mail_id, account, members, event}  a room's event (ChatHub.deliver)
    to_user   {account, event}                    to one account's pages
    to_room   {mail_id, event}                    to one room's link pages
    presence  {account, pages, last_input, mode}  a process's pages of an account
    pages     {accounts: [[account, pages, last_input, mode], ...]}  the same for up to
                                                  500 accounts (every heartbeat)
    record    {mail_id, account, allowed, message_id}  a mail record stored
    hello     {}                                  a process (re)subscribed: the others
                                                  publish `here` and their presence now
    here      {}                                  a process is alive (every heartbeat)

Presence: every process republishes its accounts' page state each heartbeat; another
process's state counts until 3 heartbeats old (a process that died drops out). A
process that (re)subscribes says `hello` and hears everyone's state at once, so a new
or reconnected process answers lookups correctly without waiting for a heartbeat.
While a process is not subscribed (`up` clear), lookups it answers for senders
with no page of its own say `unknown` (PresenceHub.answer_status).
Without `[presence] redis` there is no bus (one process per database).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis

from mailtalk.mailid import derive_key

log = logging.getLogger("mailtalk.presence.bus")

def channel_for(site_key: bytes) -> str:
    """One channel per site (its processes share the site key): two sites may share a
    Redis, whose pub/sub channels are global across its databases."""
    return "mailtalk:v1:" + derive_key(site_key, "bus").hex()[:24]


def connect(url: str) -> aioredis.Redis:
    """`redis://...`, `rediss://...` or `unix:/path/to/redis.sock`."""
    if url.startswith("unix:"):
        return aioredis.Redis(unix_socket_path=url[len("unix:"):])
    return aioredis.from_url(url)


class _PubSub(aioredis.client.PubSub):
    """redis-py's subscription, which resubscribes by itself after a lost connection;
    here that also calls `resubscribed` (events sent meanwhile never came)."""

    resubscribed: Callable[[], None] = staticmethod(lambda: None)

    async def on_connect(self, connection: Any) -> None:
        again = bool(self.channels)
        await super().on_connect(connection)
        if again:
            self.resubscribed()


class RedisBus:
    def __init__(self, url: str, channel: str,
                 on_event: Callable[[dict[str, Any]], Awaitable[None]],
                 on_subscribed: Callable[[bool], Awaitable[None]] | None = None) -> None:
        """`on_subscribed(again)`: after each subscription; `again`: not the first, so
        events sent meanwhile were missed."""
        self.url = url
        self.channel = channel
        self._on_subscribed = on_subscribed
        self._pending: set[asyncio.Task[None]] = set()
        self.proc = secrets.token_hex(8)          # this process, for its own echoes
        self._on_event = on_event
        self._redis: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self.up = asyncio.Event()

    async def start(self) -> None:
        self._redis = connect(self.url)
        self._task = asyncio.create_task(self._listen())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._redis is not None:
            await self._redis.aclose()

    async def publish(self, kind: str, **payload: Any) -> None:
        """Best effort: with Redis down, this process's own pages still get everything."""
        if self._redis is None:
            return
        try:
            await self._redis.publish(self.channel, json.dumps({"from": self.proc, "kind": kind,
                                                           **payload}))
        except Exception as e:           # never a page's error: the bus is best effort
            log.warning("Redis: cannot publish %s: %s: %s", kind, type(e).__name__, e)

    async def _listen(self) -> None:
        """Subscribe, and again after a failure (every second until Redis is back);
        redis-py itself resubscribes after a lost connection. Events published while
        this process was not subscribed reach its pages only as history."""
        assert self._redis is not None
        again = False                 # a subscription of ours before this one
        while True:
            try:
                async with _PubSub(self._redis.connection_pool) as ps:
                    ps.resubscribed = self._resubscribed
                    await ps.subscribe(self.channel)
                    self.up.set()
                    log.info("Redis: subscribed to %s", self.channel)
                    await self._subscribed(again)
                    async for msg in ps.listen():
                        if msg.get("type") == "message":
                            await self._handle(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as e:           # any failure: log it, subscribe again
                if self.up.is_set():
                    log.warning("Redis: subscription lost (%s); reconnecting", e)
                self.up.clear()
                again = True
                await asyncio.sleep(1.0)

    def _resubscribed(self) -> None:
        log.warning("Redis: subscribed again after a lost connection")
        self._spawn(self._subscribed(True))

    async def _subscribed(self, again: bool) -> None:
        await self.publish("hello")
        if self._on_subscribed is not None:
            await self._on_subscribed(again)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)                   # kept until done (no lost tasks)
        task.add_done_callback(self._pending.discard)

    async def _handle(self, data: bytes) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict) or event.get("from") == self.proc:
            return
        try:
            await self._on_event(event)
        except Exception:
            log.exception("Redis: event %s failed", event.get("kind"))
