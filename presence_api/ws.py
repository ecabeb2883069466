"""The WebSocket of a chat page: `/ws` (logged-in user) and `/ws/c/<token>` (link page).

The Origin must be public_url's (no other site can drive a user's socket with their
cookie). Every frame is checked again: the session (or the link's expiry) is still
valid, and the room it names is this page's. Frames are JSON objects:

  page -> server: open (link pages: once per page load) | join {mail_id}
                  | send {mail_id, text} | read {mail_id, up_to} | activity
                  | status {mode}                      (status: users only)
  server -> page: hello | room | message | opened | members | presence | error {error}
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from typing import Any

from aiohttp import WSMsgType, web

from presence_api.auth import BROWSER_COOKIE, SESSION_COOKIE, token_hash
from presence_api.chat import ChatError
from presence_api.presence import Client
from presence_api.service import Service, service
from presence_api.store import MODES

log = logging.getLogger("mailtalk.presence.ws")


def _origin_ok(svc: Service, request: web.Request) -> bool:
    return request.headers.get("Origin", "").rstrip("/").lower() == svc.origin


async def _open(svc: Service, request: web.Request) -> web.WebSocketResponse:
    max_chars = svc.cfg.presence.chat_message_max_chars
    ws = web.WebSocketResponse(heartbeat=float(svc.cfg.presence.heartbeat_seconds),
                               max_msg_size=max_chars * 4 + 4096)
    await ws.prepare(request)
    return ws


async def ws_user(request: web.Request) -> web.StreamResponse:
    svc = service(request)
    if not _origin_ok(svc, request):
        raise web.HTTPForbidden(text="bad origin")
    token = request.cookies.get(SESSION_COOKIE)
    account = await svc.auth.session_account(token)
    if account is None or token is None:
        raise web.HTTPUnauthorized(text="log in first")
    acct = await svc.store.get_account(account)
    if acct is None:
        raise web.HTTPUnauthorized(text="no such account")
    ws = await _open(svc, request)
    client = Client(ws, "user", account, svc.clock(), session_hash=token_hash(token))
    svc.presence.add(client, acct.mode)
    try:
        await client.send({"type": "hello", "kind": "user", "you": account,
                           "status": svc.presence.status(account), "mode": acct.mode})
        await svc.presence.announce(account, share=True)
    except BaseException:
        await svc.presence.remove(client)
        raise
    return await _serve(svc, client)


async def ws_link(request: web.Request) -> web.StreamResponse:
    svc = service(request)
    if not _origin_ok(svc, request):
        raise web.HTTPForbidden(text="bad origin")
    # The first real open stores the mail row (a placeholder if the record has not
    # arrived) that the room needs; lookups stored nothing.
    opened = await svc.links.open(request.match_info["token"], svc.clock(), store_it=True)
    if opened.link is None or opened.mail is None:
        raise web.HTTPNotFound(text="no such link")
    link, mail = opened.link, opened.mail
    ws = await _open(svc, request)
    client = Client(ws, "link", link.recipient, svc.clock(), mail_id=link.mail_id,
                    link_expires=link.expires_at)
    # The link page set the browser cookie; a client without one counts as a browser
    # of its own each time.
    cookie = request.cookies.get(BROWSER_COOKIE) or secrets.token_urlsafe(16)
    client.browser = hashlib.sha256(cookie.encode()).hexdigest()[:32]
    svc.chat.attach(client)
    svc.presence.watch(client, mail.account)
    await client.send({"type": "hello", "kind": "link", "you": link.recipient,
                       "mail_id": link.mail_id})
    return await _serve(svc, client)


async def _still_valid(svc: Service, client: Client) -> bool:
    if client.kind == "link":
        return svc.clock() < client.link_expires
    return await svc.store.get_session(client.session_hash or "", svc.clock()) == client.identity


async def _frame(svc: Service, client: Client, frame: dict[str, Any]) -> None:
    kind = frame.get("type")
    if kind == "open" and client.kind == "link" and not client.opened:
        # The recipient's page is up in a browser: join the room, tell the sender.
        client.opened = True
        mail = await svc.chat.authorize(client, client.mail_id)
        await svc.chat.opened(mail, client.identity, client.browser)
    elif kind == "join":
        mail = await svc.chat.authorize(client, frame.get("mail_id"))
        await client.send(await svc.chat.snapshot(client, mail))
    elif kind == "send":
        await svc.chat.post(client, frame.get("mail_id"), frame.get("text"))
        await svc.presence.activity(client)
    elif kind == "read":
        mail = await svc.chat.authorize(client, frame.get("mail_id"))
        up_to = frame.get("up_to")
        if isinstance(up_to, int) and not isinstance(up_to, bool) and up_to > 0:
            await svc.store.mark_read(mail.mail_id, client.identity, up_to)
    elif kind == "digests":
        # The participant's own choice: digests of missed messages by mail, or not.
        on = frame.get("on")
        if not isinstance(on, bool):
            raise ChatError("bad_frame")
        await svc.store.set_digests(client.identity, on)
        await client.send({"type": "digests", "on": on})
    elif kind == "activity":
        await svc.presence.activity(client)
    elif kind == "status" and client.kind == "user":
        mode = frame.get("mode")
        if mode not in MODES:
            raise ChatError("bad_mode")
        await svc.lookups.set_mode(client.identity, str(mode))
        await svc.presence.set_mode(client.identity, str(mode))
    else:
        raise ChatError("bad_frame")


async def _serve(svc: Service, client: Client) -> web.WebSocketResponse:
    ws = client.ws
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            if not await _still_valid(svc, client):
                await client.send({"type": "error", "error": "session_ended"})
                await ws.close(code=4001, message=b"session ended")
                break
            try:
                frame = json.loads(msg.data)
                if not isinstance(frame, dict):
                    raise ChatError("bad_frame")
                await _frame(svc, client, frame)
            except ValueError:
                await client.send({"type": "error", "error": "bad_frame"})
            except ChatError as e:
                await client.send({"type": "error", "error": str(e),
                                   "mail_id": frame.get("mail_id") if isinstance(frame, dict)
                                   else None})
    finally:
        svc.chat.detach(client)
        await svc.presence.remove(client)
    return ws
