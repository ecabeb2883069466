"""Chat over WebSockets: authorization per frame and room, fan-out, presence, heartbeat."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp import ClientWebSocketResponse, WSServerHandshakeError

from support.presence_app import Presence, browser, start_presence
from support.presence_ws import link_ws, links_for, next_of, open_link, sender_ws

ALICE, MALLORY = "alice@a.test", "mallory@a.test"
BOB, CAROL = "bob@b.test", "carol@c.test"


@pytest.fixture
async def p(tmp_path: Path) -> AsyncIterator[Presence]:
    pres = await start_presence(tmp_path, chat_message_max_chars=50, idle_away_seconds=60,
                                heartbeat_seconds=1)
    await pres.add_user(ALICE)
    await pres.add_user(MALLORY)
    yield pres
    await pres.client.close()


async def test_websocket_origin_is_checked(p: Presence) -> None:
    _, links = await links_for(p, [BOB])
    await p.login(ALICE)
    for path in ("/ws", "/ws" + links[BOB]):
        for origin in ("http://evil.test", None):
            headers = {"Origin": origin} if origin else {}
            with pytest.raises(WSServerHandshakeError) as e:
                await p.client.ws_connect(path, headers=headers)
            assert e.value.status == 403


async def test_websocket_needs_a_session_or_a_valid_link(p: Presence) -> None:
    with pytest.raises(WSServerHandshakeError) as e:
        await p.client.ws_connect("/ws", headers={"Origin": p.origin})
    assert e.value.status == 401
    with pytest.raises(WSServerHandshakeError) as e:
        await p.client.ws_connect("/ws/c/" + "A" * 32, headers={"Origin": p.origin})
    assert e.value.status == 404


async def test_recipient_opens_link_sender_told_at_once_and_chat_flows(p: Presence) -> None:
    mid, links = await links_for(p, [BOB, CAROL], subject="Quarterly figures")
    alice = await sender_ws(p)
    # A mail scanner fetching the URL is not an opening: no member, no notice.
    assert (await p.client.get(links[BOB])).status == 200
    assert await p.svc.store.members(mid) == []
    bob = await open_link(p, links[BOB])                   # Bob's browser opens it
    opened = await next_of(alice, "opened", mail_id=mid)
    assert opened["recipient"] == BOB and opened["first"] is True
    assert opened["mail"]["subject"] == "Quarterly figures"
    assert opened["mail"]["body_text"] == "The text of the mail."
    assert opened["mail"]["recipients"] == [BOB, CAROL]

    await bob.send_json({"type": "join", "mail_id": mid})
    room = await next_of(bob, "room")
    assert room["mail"]["subject"] == "Quarterly figures"
    assert "recipients" not in room["mail"]                # no envelope (Bcc) for recipients
    assert room["members"] == [BOB] and room["sender_status"] == "online"

    await bob.send_json({"type": "send", "mail_id": mid, "text": "Hi Alice, a question"})
    got = await next_of(alice, "message", mail_id=mid)
    assert got["author"] == BOB and got["text"] == "Hi Alice, a question"
    await alice.send_json({"type": "send", "mail_id": mid, "text": "Ask away"})
    back = await next_of(bob, "message", author=ALICE)
    assert back["text"] == "Ask away"

    # Carol joins later and sees the earlier messages: one group per mail
    carol = await open_link(p, links[CAROL])
    members = await next_of(alice, "members", mail_id=mid)
    assert members["members"] == [BOB, CAROL]
    await carol.send_json({"type": "join", "mail_id": mid})
    room = await next_of(carol, "room")
    assert [m["text"] for m in room["messages"]] == ["Hi Alice, a question", "Ask away"]
    await carol.send_json({"type": "send", "mail_id": mid, "text": "Me too"})
    for ws in (alice, bob):
        assert (await next_of(ws, "message", author=CAROL))["text"] == "Me too"
    for ws in (alice, bob, carol):
        await ws.close()


async def test_frames_are_authorized_for_their_room(p: Presence) -> None:
    mid1, links1 = await links_for(p, [BOB], subject="one")
    mid2, _ = await links_for(p, [CAROL], subject="two")
    assert (await p.client.get(links1[BOB])).status == 200
    bob = await link_ws(p, links1[BOB])
    # Bob's link page may not enter or write into another mail's room
    await bob.send_json({"type": "join", "mail_id": mid2})
    assert (await next_of(bob, "error"))["error"] == "forbidden"
    await bob.send_json({"type": "send", "mail_id": mid2, "text": "sneaky"})
    assert (await next_of(bob, "error"))["error"] == "forbidden"
    assert await p.svc.store.messages(mid2, 10) == []
    # nor set anybody's presence
    await bob.send_json({"type": "status", "mode": "busy"})
    assert (await next_of(bob, "error"))["error"] == "bad_frame"

    # another logged-in user may not read or write Alice's conversations
    mallory_http = browser(p)
    try:
        await p.login(MALLORY, client=mallory_http)
        mallory = await mallory_http.ws_connect("/ws", headers={"Origin": p.origin})
        await next_of(mallory, "hello")
        await mallory.send_json({"type": "join", "mail_id": mid1})
        assert (await next_of(mallory, "error"))["error"] == "forbidden"
        await mallory.send_json({"type": "send", "mail_id": mid1, "text": "hi"})
        assert (await next_of(mallory, "error"))["error"] == "forbidden"
        await mallory.send_json({"type": "read", "mail_id": mid1, "up_to": 1})
        assert (await next_of(mallory, "error"))["error"] == "forbidden"
        r = await mallory_http.get(f"/m/{mid1}")
        assert r.status == 404
        await mallory.close()
    finally:
        await mallory_http.close()
    assert await p.svc.store.messages(mid1, 10) == []
    await bob.close()


async def test_message_size_limit(p: Presence) -> None:
    mid, links = await links_for(p, [BOB])
    await p.client.get(links[BOB])
    bob = await link_ws(p, links[BOB])
    await bob.send_json({"type": "send", "mail_id": mid, "text": "x" * 51})
    assert (await next_of(bob, "error"))["error"] == "too_long"
    await bob.send_json({"type": "send", "mail_id": mid, "text": "x" * 50})
    await next_of(bob, "message")
    assert [len(m.text) for m in await p.svc.store.messages(mid, 10)] == [50]
    await bob.close()


async def test_a_writer_cannot_flood_a_room(tmp_path: Path) -> None:
    p = await start_presence(tmp_path, chat_messages_per_minute=3)
    await p.add_user(ALICE)
    mid, links = await links_for(p, [BOB])
    bob = await link_ws(p, links[BOB])
    for i in range(3):
        await bob.send_json({"type": "send", "mail_id": mid, "text": f"m{i}"})
        await next_of(bob, "message", text=f"m{i}")
    await bob.send_json({"type": "send", "mail_id": mid, "text": "one too many"})
    assert (await next_of(bob, "error"))["error"] == "rate_limited"
    p.clock.advance(61)
    await bob.send_json({"type": "send", "mail_id": mid, "text": "later"})
    await next_of(bob, "message", text="later")
    assert [m.text for m in await p.svc.store.messages(mid, 10)] == ["m0", "m1", "m2", "later"]
    await bob.close()
    await p.client.close()


async def test_logged_out_session_stops_the_socket(p: Presence) -> None:
    mid, _ = await links_for(p, [BOB])
    alice = await sender_ws(p)
    r = await p.client.get("/")
    from support.presence_app import csrf_of
    r = await p.client.post("/logout", data={"csrf": csrf_of(await r.text())},
                            allow_redirects=False)
    assert r.status == 303
    await alice.send_json({"type": "join", "mail_id": mid})
    assert (await next_of(alice, "error"))["error"] == "session_ended"


async def test_unread_counts_and_history(p: Presence) -> None:
    mid, links = await links_for(p, [BOB])
    bob = await open_link(p, links[BOB])
    for text in ("one", "two"):
        await bob.send_json({"type": "send", "mail_id": mid, "text": text})
        await next_of(bob, "message", text=text)
    convs = await p.svc.store.conversations(ALICE, 10)
    assert [(c.mail.mail_id, c.unread, c.members) for c in convs] == [(mid, 2, (BOB,))]
    alice = await sender_ws(p)
    await alice.send_json({"type": "join", "mail_id": mid})
    room = await next_of(alice, "room")
    assert [m["text"] for m in room["messages"]] == ["one", "two"]
    await alice.send_json({"type": "read", "mail_id": mid, "up_to": room["messages"][-1]["id"]})
    await alice.send_json({"type": "join", "mail_id": mid})     # a round trip: read is done
    await next_of(alice, "room")
    assert (await p.svc.store.conversations(ALICE, 10))[0].unread == 0
    await alice.close()
    await bob.close()


async def test_presence_modes_idle_and_live_updates(p: Presence) -> None:
    mid, links = await links_for(p, [BOB])
    await p.client.get(links[BOB])
    bob = await link_ws(p, links[BOB])
    status = lambda: p.lookup(ALICE, mid, [])  # noqa: E731
    assert (await status())["status"] == "offline"
    alice = await sender_ws(p)
    assert (await next_of(bob, "presence", account=ALICE))["status"] == "online"
    assert (await status())["status"] == "online"

    await alice.send_json({"type": "status", "mode": "busy"})
    assert (await next_of(alice, "presence", status="busy"))["self"] is True
    assert (await next_of(bob, "presence", account=ALICE))["status"] == "busy"
    assert (await status())["status"] == "busy"
    assert (await p.svc.store.get_account(ALICE)).mode == "busy"   # type: ignore[union-attr]

    await alice.send_json({"type": "status", "mode": "offline"})   # appear offline
    own = await next_of(alice, "presence", status="offline")
    assert own["mode"] == "offline"
    assert (await status())["status"] == "offline"

    await alice.send_json({"type": "status", "mode": "auto"})
    await next_of(alice, "presence", status="online")
    p.clock.advance(61)                                            # idle past idle_away
    await p.svc.presence.sweep()
    assert (await next_of(alice, "presence", status="away"))["self"] is True
    assert (await status())["status"] == "away"
    await alice.send_json({"type": "activity"})
    await next_of(alice, "presence", status="online")
    await alice.close()
    assert (await next_of(bob, "presence", status="offline"))["account"] == ALICE
    assert (await status())["status"] == "offline"
    await bob.close()


async def test_vanished_page_drops_out_by_heartbeat(p: Presence) -> None:
    """A page that stops answering pings (a closed laptop lid) is dropped: heartbeat 1 s."""
    mid = p.mail_ids.issue(ALICE)
    await p.login(ALICE)
    ws = await p.client.ws_connect("/ws", headers={"Origin": p.origin}, autoping=False)
    assert (await p.lookup(ALICE, mid, []))["status"] == "online"
    deadline = time.monotonic() + 10
    while (await p.lookup(ALICE, mid, []))["status"] != "offline":
        assert time.monotonic() < deadline, "the silent page was never dropped"
        await asyncio.sleep(0.1)
    await ws.close()


async def test_bad_frames_get_an_error(p: Presence) -> None:
    alice = await sender_ws(p)
    await alice.send_str("not json")
    assert (await next_of(alice, "error"))["error"] == "bad_frame"
    await alice.send_json(["a", "list"])
    assert (await next_of(alice, "error"))["error"] == "bad_frame"
    await alice.send_json({"type": "status", "mode": "invisible"})
    assert (await next_of(alice, "error"))["error"] == "bad_mode"
    await alice.close()


async def test_a_recipient_with_an_account_may_log_in_instead(p: Presence) -> None:
    local = "bob@a.test"                     # a recipient who has an account here
    await p.add_user(local)
    mid, links = await links_for(p, [local])
    other_mid, _ = await links_for(p, [CAROL])
    http = browser(p)
    try:
        await p.login(local, client=http)
        ws = await http.ws_connect("/ws", headers={"Origin": p.origin})
        await next_of(ws, "hello")
        await ws.send_json({"type": "join", "mail_id": mid})     # not a member yet
        assert (await next_of(ws, "error"))["error"] == "forbidden"
        link_page = await open_link(p, links[local])            # opened the link once
        await next_of(link_page, "members")
        await ws.send_json({"type": "join", "mail_id": mid})
        room = await next_of(ws, "room")
        assert "recipients" not in room["mail"]                  # not the sender's view
        await ws.send_json({"type": "join", "mail_id": other_mid})
        assert (await next_of(ws, "error"))["error"] == "forbidden"
        alice = await sender_ws(p)
        await alice.send_json({"type": "send", "mail_id": mid, "text": "hello Bob"})
        assert (await next_of(ws, "message", mail_id=mid))["text"] == "hello Bob"
        convs = await p.svc.store.conversations(local, 10)
        assert [(c.mail.mail_id, c.unread) for c in convs] == [(mid, 1)]
        assert (await http.get(f"/m/{mid}")).status == 200
        assert (await http.get(f"/m/{other_mid}")).status == 404
        await ws.close()
        await alice.close()
        await link_page.close()
    finally:
        await http.close()


def test_origin_of_public_url() -> None:
    from presence_api.service import origin_of
    assert origin_of("https://Chat.A.example:443") == "https://chat.a.example"
    assert origin_of("http://127.0.12.1:80/") == "http://127.0.12.1"
    assert origin_of("https://chat.a.example:8443/base") == "https://chat.a.example:8443"
    assert origin_of("http://[::1]:8470") == "http://[::1]:8470"


async def test_a_link_opened_in_a_second_browser_is_marked(p: Presence) -> None:
    """Bob's link opened again in bob's browser: nothing to mark. Opened in another
    browser (a forward, a leaked header): everyone in the room is told, the sender too."""
    mid, links = await links_for(p, [BOB, CAROL])
    alice = await sender_ws(p)
    await alice.send_json({"type": "join", "mail_id": mid})
    assert (await next_of(alice, "room"))["shared"] == []
    bob = await open_link(p, links[BOB])
    first = await next_of(alice, "members", mail_id=mid)
    assert first["members"] == [BOB] and first["shared"] == []
    again = await open_link(p, links[BOB])          # the same browser, a second tab
    await again.send_json({"type": "join", "mail_id": mid})
    assert (await next_of(again, "room"))["shared"] == []
    other = browser(p)
    try:
        assert (await other.get(links[BOB])).status == 200
        ws = await other.ws_connect("/ws" + links[BOB], headers={"Origin": p.origin})
        await next_of(ws, "hello")
        await ws.send_json({"type": "open"})
        marked = await next_of(alice, "members", mail_id=mid)
        assert marked["shared"] == [BOB]
        await next_of(bob, "members", mail_id=mid, shared=[BOB])     # the room is told too
        await ws.close()
    finally:
        await other.close()
    await alice.send_json({"type": "join", "mail_id": mid})
    assert (await next_of(alice, "room"))["shared"] == [BOB]
    for w in (alice, bob, again):
        await w.close()
