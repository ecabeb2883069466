"""The presence service's WebSockets as a browser's pages use them: the sender's
page (`/ws` after log-in) and a recipient's link page (`/ws/c/<token>`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import ClientWebSocketResponse

from .presence_app import Presence

ALICE = "alice@a.test"


async def next_of(ws: ClientWebSocketResponse, kind: str, timeout: float = 10.0,
                  **match: Any) -> dict[str, Any]:
    """The next frame of this type (and fields), skipping others; fails at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {kind} frame {match} within {timeout} s")
        try:
            frame = await ws.receive_json(timeout=left)
        except asyncio.TimeoutError:
            continue
        if frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items()):
            return frame


async def links_for(p: Presence, recipients: list[str], subject: str = "Hello",
                    sender: str = ALICE) -> tuple[str, dict[str, str]]:
    """A recorded mail from `sender` and each recipient's link path, as its hook got it."""
    mid = await p.record(sender, recipients, subject=subject)
    links = (await p.lookup(sender, mid, recipients))["links"]
    return mid, {r: p.link_path(u) for r, u in links.items()}


async def sender_ws(p: Presence, account: str = ALICE) -> ClientWebSocketResponse:
    """The logged-in sender's page socket (after the hello frame)."""
    await p.login(account)
    ws = await p.client.ws_connect("/ws", headers={"Origin": p.origin})
    assert (await ws.receive_json())["type"] == "hello"
    return ws


async def link_ws(p: Presence, path: str) -> ClientWebSocketResponse:
    ws = await p.client.ws_connect("/ws" + path, headers={"Origin": p.origin})
    assert (await next_of(ws, "hello"))["kind"] == "link"
    return ws


async def open_link(p: Presence, path: str) -> ClientWebSocketResponse:
    """What a browser does with a link: load the page, connect its socket, say "open"."""
    assert (await p.client.get(path)).status == 200
    ws = await link_ws(p, path)
    await ws.send_json({"type": "open"})
    return ws
