"""What another presence process published (bus.py), applied here: its room events
to this process's pages, its pages' presence, the mail records it stored."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mailtalk import metrics
from presence_api.presence import send_all
from presence_api.service import Service
from presence_api.store import MailState

log = logging.getLogger("mailtalk.presence.bus")

VALID_HEARTBEATS = 3       # another process's pages count this many heartbeats long
PAGES_PER_EVENT = 500      # accounts in one `pages` event (share_all)


async def heard(svc: Service, e: dict[str, Any]) -> None:
    kind, event = e.get("kind"), e.get("event")
    metrics.BUS_EVENTS.labels(str(kind)[:20]).inc()
    if kind == "deliver" and isinstance(event, dict):
        await svc.chat.deliver_here(str(e["mail_id"]), str(e["account"]),
                                    [str(m) for m in e.get("members", [])], event)
    elif kind == "to_user" and isinstance(event, dict):
        await send_all(svc.presence.clients.get(str(e["account"]), ()), event)
    elif kind == "to_room" and isinstance(event, dict):
        await svc.chat.deliver_here(str(e["mail_id"]), "", [], event)
    elif kind == "presence":
        await svc.presence.heard(str(e["from"]), str(e["account"]), int(e["pages"]),
                                 float(e["last_input"]), str(e["mode"]),
                                 VALID_HEARTBEATS * svc.cfg.presence.heartbeat_seconds)
    elif kind == "pages":
        for account, pages, last_input, mode in e.get("accounts", []):
            await svc.presence.heard(str(e["from"]), str(account), int(pages),
                                     float(last_input), str(mode),
                                     VALID_HEARTBEATS * svc.cfg.presence.heartbeat_seconds)
    elif kind in ("hello", "here"):
        svc.peers[str(e["from"])] = svc.clock() + VALID_HEARTBEATS * svc.cfg.presence.heartbeat_seconds
        if kind == "hello":            # a process (re)joined: it learns our pages now
            await share_all(svc)
    elif kind == "hit":
        limiter = svc.limiters().get(str(e["limit"]))
        if limiter is not None:
            limiter.count(str(e["key"]), int(e.get("events", 1)))
    elif kind == "record":
        allowed = frozenset(str(r).lower() for r in e.get("allowed", []))
        svc.lookups.remember(str(e["mail_id"]), MailState(str(e["account"]), allowed,
                                                          str(e.get("message_id", ""))))


def share_limits(svc: Service, publish: Callable[..., Awaitable[None]]) -> None:
    """Every rate limit's hits go to the other processes too (ratelimit.py)."""
    pending: set[asyncio.Task[None]] = set()

    def teller(name: str) -> Callable[[str, int], None]:
        def on_hit(key: str, events: int) -> None:
            task = asyncio.get_running_loop().create_task(
                publish("hit", limit=name, key=key, events=events))
            pending.add(task)                       # kept until done (no lost tasks)
            task.add_done_callback(pending.discard)
        return on_hit
    for name, limiter in svc.limiters().items():
        limiter.on_hit = teller(name)


async def subscribed(svc: Service, again: bool) -> None:
    """On the bus (again): the others learn this process's pages now, and after a
    gap this process's pages catch up on what they missed."""
    await share_all(svc)
    if again:
        await resync(svc)


async def resync(svc: Service) -> None:
    """After the bus was down, events of other processes may have been missed: every
    page here is told to enter its room again (a `room` frame: the chat whole)."""
    pages = [c for conns in svc.presence.clients.values() for c in conns]
    await send_all(pages + svc.chat.link_clients(), {"type": "resync"})


def peers_alive(svc: Service) -> int:
    """Other processes heard from within VALID_HEARTBEATS heartbeats (/readyz)."""
    now = svc.clock()
    for proc in [p for p, until in svc.peers.items() if until <= now]:
        del svc.peers[proc]
    return len(svc.peers)


async def share_all(svc: Service) -> None:
    """This process is here, with these pages of every account: PAGES_PER_EVENT
    accounts to an event. Two processes with 5,000 idle pages each, default heartbeat
    (`bench/ws_bench.py idle --store pg-redis`, paired runs, 2026-12-04): one event per
    account cost each process 13.6-17.2% of a core, batched 3.7-4.0%."""
    publish = svc.presence.publish
    if publish is None:
        return
    await publish("here")
    accounts = list(svc.presence.clients)
    for i in range(0, len(accounts), PAGES_PER_EVENT):
        await publish("pages", accounts=[(a, *svc.presence.pages_of(a))
                                         for a in accounts[i:i + PAGES_PER_EVENT]])


async def republish(svc: Service) -> None:
    """Each heartbeat, this process's pages of every account, so that the others keep
    counting them (and stop when this process is gone)."""
    while True:
        await asyncio.sleep(svc.cfg.presence.heartbeat_seconds)
        try:
            await share_all(svc)
        except Exception:
            log.exception("republishing presence failed")
