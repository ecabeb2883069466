"""Two real `mailtalk presence` processes on one private PostgreSQL and one private
Redis (support/postgres.py, support/redis.py), as two backends behind a load balancer
would be used: a page on one, lookups and the other pages on the other."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from mailtalk.lookup_signing import public_key_text
from mailtalk.mailid import MailIds, outbox_api_token
from support.mailtalk import MailtalkService
from support.postgres import Postgres, unavailable as pg_unavailable
from support.presence_app import HOOK_KEY, signed
from support.presence_ws import next_of
from support.redis import Redis, unavailable as redis_unavailable
from support.wait import free_port

HOST = "127.0.28.1"
ALICE, BOB = "alice@a.test", "bob@b.test"
PASSWORD = "a long password 2"
REDIS_OF: dict[Path, Redis] = {}            # each test's Redis, to restart it


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[tuple[MailtalkService, MailtalkService, str]]:
    with two_processes(tmp_path) as procs:
        yield procs


@contextlib.contextmanager
def two_processes(tmp_path: Path, heartbeat: int = 1
                  ) -> Iterator[tuple[MailtalkService, MailtalkService, str]]:
    for why in (pg_unavailable(), redis_unavailable()):
        if why:
            pytest.skip(why)
    pg, redis = Postgres().start(), Redis().start()
    REDIS_OF[tmp_path] = redis
    ports = [free_port(HOST), free_port(HOST)]
    public = f"http://{HOST}:{ports[0]}"             # one public origin for both
    hook = f"v=mailtalk1; api=http://127.0.0.1:9; k={public_key_text(HOOK_KEY)}"
    procs = [MailtalkService(tmp_path, {
        "site": {"secret_file": str(tmp_path / "site.key"), "state_dir": str(tmp_path / f"s{i}")},
        "domains": {"names": ["a.test"]},
        "presence": {"listen": f"{HOST}:{port}", "public_url": public, "database": pg.url,
                     "redis": redis.url, "heartbeat_seconds": heartbeat,
                     "lookups_per_minute_per_client": 10},
        "dns": {"static": {"b.test": hook}}}, subcommand="presence", name=f"p{i}")
        for i, port in enumerate(ports)]
    try:
        procs[0].start()                  # makes the site key and the schema
        procs[1].start()
        r = procs[0].command("user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        yield procs[0], procs[1], public
    finally:
        for p in procs:
            p.kill()
        redis.remove()
        pg.remove()


def base(svc: MailtalkService) -> str:
    return "http://" + svc.config_path.read_text().split('listen = "')[1].split('"')[0]


async def frame_within(ws: aiohttp.ClientWebSocketResponse, kind: str, seconds: float,
                       seen: list[str]) -> bool:
    """Whether a frame of `kind` comes within `seconds`; every frame's type goes to
    `seen`."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = await ws.receive_json(timeout=left)
        except asyncio.TimeoutError:
            return False
        seen.append(frame.get("type", ""))
        if frame.get("type") == kind:
            return True
    return False


async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


async def alice_page(c: aiohttp.ClientSession, at: str, public: str
                     ) -> aiohttp.ClientWebSocketResponse:
    """alice logs in at `at` through the form and opens her page's socket there."""
    async with c.get(at + "/login") as r:
        csrf = (await r.text()).split('name="csrf" value="')[1].split('"')[0]
    async with c.post(at + "/login", allow_redirects=False, data={
            "csrf": csrf, "account": ALICE, "password": PASSWORD}) as r:
        assert r.status == 303
    ws = await c.ws_connect(at + "/ws", headers={"Origin": public})
    await next_of(ws, "hello")
    return ws


async def hits_heard(c: aiohttp.ClientSession, at: str) -> float:
    """How many rate-limit hits of other processes `at` has counted (its /metrics)."""
    async with c.get(at + "/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('mailtalk_presence_bus_events_total{kind="hit"}'))


async def lookup(c: aiohttp.ClientSession, at: str, mail_id: str) -> dict[str, Any]:
    body = json.dumps({"account": ALICE, "mail_id": mail_id, "recipients": [BOB],
                       "message_id": "<m@a.test>"}).encode()
    async with c.post(at + "/api/v1/lookup", data=body,
                      headers=signed(body, "b.test", "/api/v1/lookup", time.time())) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_pages_lookups_and_chat_across_two_processes(
        sites: tuple[MailtalkService, MailtalkService, str], tmp_path: Path) -> None:
    one, two, public = sites
    at1, at2 = base(one), base(two)
    key = (tmp_path / "site.key").read_bytes()
    mail_id = MailIds(key, 30).issue(ALICE)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as alice_c, \
            aiohttp.ClientSession() as hook, aiohttp.ClientSession() as bob_c:
        # The milter's record reaches process 2; alice logs in on process 1.
        async with hook.post(at2 + "/api/v1/mails", json={
                "mail_id": mail_id, "account": ALICE, "message_id": "<m@a.test>",
                "subject": "Two processes", "recipients": [BOB]},
                headers={"Authorization": f"Bearer {outbox_api_token(key)}"}) as r:
            assert r.status == 201, await r.text()
        alice = await alice_page(alice_c, at1, public)

        # A lookup answered by process 2 knows alice's page on process 1.
        deadline = time.monotonic() + 10
        while (answer := await lookup(hook, at2, mail_id))["status"] != "online":
            assert time.monotonic() < deadline, answer
            await asyncio.sleep(0.2)
        link = answer["links"][BOB]

        # Bob's link page on process 2: alice's page on process 1 is told, and the
        # chat goes both ways, in order.
        bob = await bob_c.ws_connect(at2 + "/ws" + link[len(public):], headers={"Origin": public})
        await next_of(bob, "hello")
        await bob.send_json({"type": "open"})
        await next_of(alice, "opened", recipient=BOB)
        await alice.send_json({"type": "join", "mail_id": mail_id})
        await next_of(alice, "room")
        for i in range(3):
            await bob.send_json({"type": "send", "mail_id": mail_id, "text": f"bob {i}"})
        got = [(await next_of(alice, "message"))["text"] for _ in range(3)]
        assert got == ["bob 0", "bob 1", "bob 2"]
        await alice.send_json({"type": "send", "mail_id": mail_id, "text": "hi bob"})
        assert (await next_of(bob, "message", text="hi bob"))["author"] == ALICE
        await alice.send_json({"type": "status", "mode": "busy"})
        await next_of(bob, "presence", account=ALICE, status="busy")

        # Refused lookups of one client count at both: 6 at process 1 and 4 at process
        # 2 reach the limit of 10 a minute, and process 2 refuses the next (a limit of
        # its own would allow 10 there, 20 across two).
        heard_before = await hits_heard(hook, at2)
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=("127.0.28.9", 0))) as guesser:
            for at in [at1] * 6 + [at2] * 4:
                async with guesser.post(at + "/api/v1/lookup", json={"bad": 1}) as r:
                    assert r.status == 400
            deadline = time.monotonic() + 10     # until process 1's 6 reached process 2
            while await hits_heard(hook, at2) < heard_before + 6:
                assert time.monotonic() < deadline, "process 2 never heard process 1's hits"
                await asyncio.sleep(0.05)
            async with guesser.post(at2 + "/api/v1/lookup", json={"bad": 1}) as r:
                assert r.status == 429

        # Process 1 dies: process 2 goes on answering, and alice is offline there
        # once process 1's pages are no longer refreshed.
        one.kill()
        deadline = time.monotonic() + 15
        while (answer := await lookup(hook, at2, mail_id))["status"] != "offline":
            assert time.monotonic() < deadline, answer
            await asyncio.sleep(0.2)
        await bob.close()


async def test_redis_restarted_the_processes_talk_again(tmp_path: Path) -> None:
    """Redis goes away and comes back (same socket): each process resubscribes, and a
    link page's message on one reaches the sender's page on the other again. (What
    was published while a process was not subscribed reaches its pages only as
    history, when they next enter the room.)"""
    with two_processes(tmp_path) as (one, two, public):
        at1, at2 = base(one), base(two)
        key = (tmp_path / "site.key").read_bytes()
        mail_id = MailIds(key, 30).issue(ALICE)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as c, \
                aiohttp.ClientSession() as hook:
            async with hook.post(at2 + "/api/v1/mails", json={
                    "mail_id": mail_id, "account": ALICE, "message_id": "<m@a.test>",
                    "recipients": [BOB]},
                    headers={"Authorization": f"Bearer {outbox_api_token(key)}"}) as r:
                assert r.status == 201
            alice = await alice_page(c, at1, public)
            await alice.send_json({"type": "join", "mail_id": mail_id})
            await next_of(alice, "room")
            deadline = time.monotonic() + 10     # until process 2 knows alice's account
            while not (answer := await lookup(hook, at2, mail_id))["links"]:
                assert time.monotonic() < deadline, answer
                await asyncio.sleep(0.2)
            link = answer["links"][BOB]
            REDIS_OF[tmp_path].stop()
            REDIS_OF[tmp_path].start()
            bob = await hook.ws_connect(at2 + "/ws" + link[len(public):],
                                        headers={"Origin": public})
            await next_of(bob, "hello")
            # A page reads all the time (that is also how it answers the heartbeat's
            # pings): so does bob's, in the background, while the loop below writes.
            reading = asyncio.create_task(drain(bob))
            deadline = time.monotonic() + 20
            n, frames = 0, []
            while True:            # until both have resubscribed (each tries every second)
                n += 1
                await bob.send_json({"type": "send", "mail_id": mail_id, "text": f"try {n}"})
                if await frame_within(alice, "message", 1.0, frames):
                    break
                assert time.monotonic() < deadline, "no message across after Redis came back"
            # Process 1 lost its subscription: alice's page is told to enter the room
            # again, and the room, read from PostgreSQL, has every message.
            if "resync" not in frames:
                await next_of(alice, "resync", timeout=10)
            await alice.send_json({"type": "join", "mail_id": mail_id})
            room = await next_of(alice, "room")
            assert [m["text"] for m in room["messages"]] == [f"try {i}" for i in range(1, n + 1)]
            await bob.close()
            await reading
            await alice.close()


async def record_mail(c: aiohttp.ClientSession, at: str, key: bytes) -> str:
    """The sending milter's record of one mail from alice to bob; its Mail-ID."""
    mail_id = MailIds(key, 30).issue(ALICE)
    async with c.post(at + "/api/v1/mails", json={
            "mail_id": mail_id, "account": ALICE, "message_id": "<m@a.test>",
            "recipients": [BOB]},
            headers={"Authorization": f"Bearer {outbox_api_token(key)}"}) as r:
        assert r.status == 201
    return mail_id


async def status_becomes(c: aiohttp.ClientSession, at: str, mail_id: str, status: str,
                         seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while (answer := await lookup(c, at, mail_id))["status"] != status:
        assert time.monotonic() < deadline, f"{at} still says {answer}, not {status}"
        await asyncio.sleep(0.1)
    return answer


async def statuses(ws: aiohttp.ClientWebSocketResponse, seen: list[str]) -> None:
    """A link page reading all the time (and so answering pings): the sender's status
    from each frame that carries it."""
    async for msg in ws:
        frame = json.loads(msg.data)
        status = frame.get("sender_status") or (
            frame.get("status") if frame.get("type") == "presence" else None)
        if status:
            seen.append(status)


async def until(done: Any, seconds: float, what: Any) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def readyz(c: aiohttp.ClientSession, at: str) -> tuple[int, dict[str, Any]]:
    async with c.get(at + "/readyz") as r:
        return r.status, await r.json()


async def test_redis_down_lookups_say_unknown_with_the_link(tmp_path: Path) -> None:
    """Redis down: process 2 cannot see alice's page on process 1, so its lookups say
    `unknown` (never a wrong `no`) and still give bob his link, and bob's link page on
    it shows `unknown`, not offline; process 1 still says online; both /readyz say
    Redis is not subscribed. Redis back: online again everywhere, and /readyz counts
    both processes."""
    with two_processes(tmp_path) as (one, two, public):
        at1, at2 = base(one), base(two)
        key = (tmp_path / "site.key").read_bytes()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as c, \
                aiohttp.ClientSession() as hook:
            mail_id = await record_mail(hook, at2, key)
            alice = await alice_page(c, at1, public)
            reading = asyncio.create_task(drain(alice))     # answers the pings
            link = (await status_becomes(hook, at2, mail_id, "online", 10))["links"][BOB]
            assert (await readyz(hook, at2)) == (200, {"ready": True, "database": "ok",
                                                       "redis": "ok", "processes": 2})
            bob = await hook.ws_connect(at2 + "/ws" + link[len(public):],
                                        headers={"Origin": public})
            bob_saw: list[str] = []          # the sender's status as bob's page shows it
            bob_reads = asyncio.create_task(statuses(bob, bob_saw))
            await bob.send_json({"type": "open"})
            await bob.send_json({"type": "join", "mail_id": mail_id})
            await until(lambda: bob_saw[-1:] == ["online"], 10, bob_saw)
            REDIS_OF[tmp_path].stop()
            answer = await status_becomes(hook, at2, mail_id, "unknown", 10)
            assert answer["links"] == {BOB: link}
            assert (await lookup(hook, at1, mail_id))["status"] == "online"
            status, doc = await readyz(hook, at2)
            assert (status, doc["ready"], doc["redis"]) == (503, False, "not subscribed")
            await until(lambda: bob_saw[-1:] == ["unknown"], 15, bob_saw)   # not "offline"
            assert "offline" not in bob_saw, bob_saw
            REDIS_OF[tmp_path].start()
            await status_becomes(hook, at2, mail_id, "online", 15)
            await until(lambda: bob_saw[-1:] == ["online"], 15, bob_saw)
            await bob.close()
            await bob_reads
            deadline = time.monotonic() + 10
            while (await readyz(hook, at2)) != (200, {"ready": True, "database": "ok",
                                                      "redis": "ok", "processes": 2}):
                assert time.monotonic() < deadline, await readyz(hook, at2)
                await asyncio.sleep(0.2)
            await alice.close()
            await reading


async def test_a_process_started_late_knows_the_others_pages_at_once(tmp_path: Path) -> None:
    """With a 300 s heartbeat, a process that restarts while alice's page is open on
    the other says online within seconds: its `hello` makes the other tell its pages
    now. (Without it, the restarted process would say offline until the other's next
    heartbeat, up to 300 s later.)"""
    with two_processes(tmp_path, heartbeat=300) as (one, two, public):
        at1, at2 = base(one), base(two)
        key = (tmp_path / "site.key").read_bytes()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as c:
            async with aiohttp.ClientSession() as hook:
                mail_id = await record_mail(hook, at2, key)
                alice = await alice_page(c, at1, public)
                reading = asyncio.create_task(drain(alice))
                await status_becomes(hook, at2, mail_id, "online", 10)
            two.stop()
            two.start()
            async with aiohttp.ClientSession() as hook:      # a new connection
                await status_becomes(hook, at2, mail_id, "online", 10)
            await alice.close()
            await reading
