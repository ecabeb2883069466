"""Several presence processes: what PostgreSQL and a second process (with Redis
between them) do to lookups/s and to a chat message's trip from one page to another,
beside ejabberd doing the same jobs.

Configurations, each measured in the same run, in rotated order after a warm-up:

    sqlite-1     one `mailtalk presence` on SQLite (the embedded default): the baseline
    pg-1         one process on a private PostgreSQL
    pg-redis-2   two processes on that PostgreSQL and a private Redis; the load is
                 spread over both (as nginx would); a message goes from a link page on
                 one process to the sender's page on the other
    ejabberd     Debian's ejabberd (bench/ejabberd_peer.py, Mnesia, one node): the
                 question "is alice online?" is its HTTP API's `get_presence` (alice
                 logged in over XMPP), the message a one-to-one XMPP chat message
                 (`<message to='bob@host' type='chat'>`) from alice's session to
                 bob's, both logged in over plain c2s on loopback. `--peer none`
                 leaves it out (then ejabberd need not be installed).

Load: `--concurrency` aiohttp clients sending signed lookups for one recorded mail
(ejabberd: get_presence for one online user) for `--duration` seconds, with the
servers' CPU time per 1000 answers (/proc; ejabberd: its beam process); then
`--messages` chat messages, one at a time, timed from send to arrival. Prints medians
per configuration and the ratios to sqlite-1 and to ejabberd (each configuration's
figure divided by theirs). Loopback only: mailtalk on 127.0.29.1, ejabberd on
127.0.29.2 (its ejabberdctl link on 127.0.0.1, see bench/ejabberd_peer.py),
PostgreSQL and Redis on unix sockets; every wait has a deadline.

    sh bench/setup     # once, as root: Debian's ejabberd, its service not started
    .venv/bin/python bench/scale_bench.py [--concurrency 16] [--duration 5] [--rounds 3] [--messages 200] [--peer ejabberd]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.append(str(Path(__file__).resolve().parent))     # after tests/: bench/support.py

from ejabberd_peer import EjabberdPeer  # noqa: E402
from pbench_util import cpu_seconds  # noqa: E402
from xmpp_online import XmppSession, go_online  # noqa: E402

from mailtalk.lookup_signing import public_key_text  # noqa: E402
from mailtalk.mailid import MailIds, outbox_api_token  # noqa: E402
from support.mailtalk import MailtalkService  # noqa: E402
from support.postgres import Postgres  # noqa: E402
from support.presence_app import HOOK_KEY, signed  # noqa: E402
from support.presence_ws import next_of  # noqa: E402
from support.redis import Redis  # noqa: E402
from support.wait import free_port  # noqa: E402

HOST = "127.0.29.1"
EJABBERD_HOST = "127.0.29.2"
XMPP_DOMAIN = "x.bench.test"
ALICE, BOB, PASSWORD = "alice@a.test", "bob@b.test", "a long password 3"
CONFIGS = ("sqlite-1", "pg-1", "pg-redis-2")
TIMEOUT = 10.0                     # seconds: any one request, frame, stanza or log-in
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=TIMEOUT)


def start(work: Path, name: str, database: str | None, redis: str | None, n: int,
          stack: ExitStack) -> tuple[list[str], str, bytes, list[int]]:
    """n presence processes: (their base URLs, the public URL, the site key, pids)."""
    ports = [free_port(HOST) for _ in range(n)]
    public = f"http://{HOST}:{ports[0]}"
    hook = f"v=mailtalk1; api=http://127.0.0.1:9; k={public_key_text(HOOK_KEY)}"
    procs = []
    for i, port in enumerate(ports):
        presence: dict[str, Any] = {"listen": f"{HOST}:{port}", "public_url": public,
                                    "lookups_per_minute_per_client": 1_000_000,
                                    "chat_messages_per_minute": 1_000_000}
        if database:
            presence["database"] = database
        if redis:
            presence["redis"] = redis
        svc = MailtalkService(work, {
            "site": {"secret_file": str(work / f"{name}.key"),
                     "state_dir": str(work / f"{name}-{i}"), "log_level": "warning"},
            "domains": {"names": ["a.test"]}, "presence": presence,
            "dns": {"static": {"b.test": hook}}}, subcommand="presence", name=f"{name}-{i}")
        svc.start()
        stack.callback(svc.kill)
        procs.append(svc)
    r = procs[0].command("user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n")
    assert r.returncode == 0 or "exists already" in r.stderr, r.stderr   # one PostgreSQL
    return ([f"http://{HOST}:{p}" for p in ports], public, (work / f"{name}.key").read_bytes(),
            [svc.proc.pid for svc in procs if svc.proc is not None])


Ask = Callable[[aiohttp.ClientSession, int], Awaitable[None]]


def mailtalk_ask(bases: list[str], mail_id: str) -> Ask:
    """One signed lookup, as a receiving hook sends it; worker i asks process i mod n."""
    body = json.dumps({"account": ALICE, "mail_id": mail_id, "recipients": [BOB],
                       "message_id": "<b@a.test>"}).encode()

    async def ask(c: aiohttp.ClientSession, i: int) -> None:
        headers = signed(body, "b.test", "/api/v1/lookup", time.time())
        async with c.post(bases[i % len(bases)] + "/api/v1/lookup", data=body,
                          headers=headers) as r:
            assert r.status == 200 and (await r.json())["links"]
    return ask


def ejabberd_ask(peer: EjabberdPeer) -> Ask:
    """ejabberd's own "is alice online?": get_presence of its HTTP API."""
    body = {"user": "alice", "server": peer.host}

    async def ask(c: aiohttp.ClientSession, i: int) -> None:
        async with c.post(peer.api_url + "/get_presence", json=body) as r:
            assert r.status == 200 and (await r.json())["show"] == "available"
    return ask


async def lookups(ask: Ask, pids: list[int], concurrency: int, duration: float
                  ) -> tuple[float, float]:
    """(answers/s, the servers' CPU ms per 1000 answers)."""
    done = 0
    stop = time.monotonic() + duration
    cpu0 = sum(cpu_seconds(p) for p in pids)

    async def worker(i: int) -> None:
        nonlocal done
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as c:
            while time.monotonic() < stop:
                await ask(c, i)
                done += 1
    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    return done / (time.monotonic() - started), 1e6 * cpu / max(done, 1)


async def trip(bases: list[str], public: str, mail_id: str, link: str, n: int) -> float:
    """Median ms from a link page's send (last process) to the sender's page (first)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     timeout=HTTP_TIMEOUT) as a, \
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as b:
        async with a.get(bases[0] + "/login") as r:
            csrf = (await r.text()).split('name="csrf" value="')[1].split('"')[0]
        async with a.post(bases[0] + "/login", allow_redirects=False,
                          data={"csrf": csrf, "account": ALICE, "password": PASSWORD}) as r:
            assert r.status == 303
        alice = await a.ws_connect(bases[0] + "/ws", headers={"Origin": public})
        await next_of(alice, "hello")
        await alice.send_json({"type": "join", "mail_id": mail_id})
        await next_of(alice, "room")
        bob = await b.ws_connect(bases[-1] + "/ws" + link[len(public):],
                                 headers={"Origin": public})
        await next_of(bob, "hello")
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            await bob.send_json({"type": "send", "mail_id": mail_id, "text": f"m{i}"})
            await next_of(alice, "message", text=f"m{i}")
            times.append((time.perf_counter() - t0) * 1000)
        await bob.close()
        await alice.close()
        return statistics.median(times)


async def ejabberd_start(stack: AsyncExitStack) -> tuple[EjabberdPeer, list[XmppSession]]:
    """A private ejabberd with alice and bob registered and logged in (XMPP, c2s)."""
    peer = EjabberdPeer(EJABBERD_HOST, XMPP_DOMAIN)
    stack.push_async_callback(peer.stop)    # before start: a failed start is stopped too
    await peer.start()                      # deadline: ejabberd_peer.START_TIMEOUT
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        await peer.register(http, ["alice", "bob"], PASSWORD)
    sessions = []
    for u in ("alice", "bob"):
        s = await asyncio.wait_for(
            go_online(peer.ip, peer.c2s_port, peer.host, u, PASSWORD), TIMEOUT)
        stack.callback(s.close)
        sessions.append(s)
    return peer, sessions


async def ejabberd_trip(sessions: list[XmppSession], host: str, n: int) -> float:
    """Median ms from alice's chat message to bob@host until bob's session reads it."""
    alice, bob = sessions
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        alice.send(f"<message to='bob@{host}' type='chat'><body>{i}</body></message>")
        await asyncio.wait_for(alice.writer.drain(), TIMEOUT)
        await bob.expect(f"<body>{i}</body>")     # deadline: xmpp_online.READ_TIMEOUT
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


async def prepare(bases: list[str], key: bytes) -> tuple[str, str]:
    mail_id = MailIds(key, 30).issue(ALICE)
    body = json.dumps({"account": ALICE, "mail_id": mail_id, "recipients": [BOB],
                       "message_id": "<b@a.test>"}).encode()
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as c:
        async with c.post(bases[0] + "/api/v1/mails", json={
                "mail_id": mail_id, "account": ALICE, "message_id": "<b@a.test>",
                "recipients": [BOB]},
                headers={"Authorization": f"Bearer {outbox_api_token(key)}"}) as r:
            assert r.status == 201, await r.text()
        deadline = time.monotonic() + 20      # every process knows the account
        for at in bases:
            while True:
                headers = signed(body, "b.test", "/api/v1/lookup", time.time())
                async with c.post(at + "/api/v1/lookup", data=body, headers=headers) as r:
                    links = (await r.json())["links"]
                if links:
                    break
                assert time.monotonic() < deadline, "a process never knew the account"
                await asyncio.sleep(0.2)
    return mail_id, links[BOB]


async def main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="mt-scale-"))
    os.chmod(work, 0o755)
    configs = CONFIGS + (("ejabberd",) if args.peer == "ejabberd" else ())
    async with AsyncExitStack() as astack:
        stack = astack.enter_context(ExitStack())
        stack.callback(shutil.rmtree, work, True)    # last, once every service is gone
        pg, redis = Postgres().start(), Redis().start()
        stack.callback(pg.remove)
        stack.callback(redis.remove)
        sites = {"sqlite-1": start(work, "s1", None, None, 1, stack),
                 "pg-1": start(work, "p1", pg.url, None, 1, stack),
                 "pg-redis-2": start(work, "pr2", pg.url, redis.url, 2, stack)}
        mails = {c: await prepare(site[0], site[2]) for c, site in sites.items()}
        asks = {c: (mailtalk_ask(sites[c][0], mails[c][0]), sites[c][3]) for c in CONFIGS}
        if args.peer == "ejabberd":
            peer, sessions = await ejabberd_start(astack)
            asks["ejabberd"] = (ejabberd_ask(peer), [peer.pid] if peer.pid else [])
        for c in configs:            # warm-up
            await lookups(*asks[c], args.concurrency, 1.0)
        rate: dict[str, list[tuple[float, float]]] = {c: [] for c in configs}
        for rnd in range(args.rounds):
            k = rnd % len(configs)
            for c in configs[k:] + configs[:k]:
                rate[c].append(await lookups(*asks[c], args.concurrency, args.duration))
        trips = {c: await trip(sites[c][0], sites[c][1], *mails[c], args.messages)
                 for c in CONFIGS}
        if args.peer == "ejabberd":
            trips["ejabberd"] = await ejabberd_trip(sessions, peer.host, args.messages)
    report(args, configs, rate, trips)
    return 0


def report(args: argparse.Namespace, configs: tuple[str, ...],
           rate: dict[str, list[tuple[float, float]]], trips: dict[str, float]) -> None:
    rates = {c: statistics.median(r for r, _ in rate[c]) for c in configs}
    cpu = {c: statistics.median(ms for _, ms in rate[c]) for c in configs}
    print(f"load average {os.getloadavg()[0]:.2f}; {args.concurrency} clients, "
          f"{args.duration:g} s x {args.rounds} rounds")
    peer = "ejabberd" if "ejabberd" in configs else None
    head = (f"{'config':12} {'lookups/s':>10} {'/sqlite-1':>9} {'CPU ms/1000':>11} "
            f"{'message ms':>11} {'/sqlite-1':>9}")
    print(head + (f" {'lookups/ejabberd':>16} {'ms/ejabberd':>11}" if peer else ""))
    for c in configs:
        line = (f"{c:12} {rates[c]:10.0f} {rates[c] / rates['sqlite-1']:9.2f} "
                f"{cpu[c]:11.0f} {trips[c]:11.2f} {trips[c] / trips['sqlite-1']:9.2f}")
        if peer:
            line += f" {rates[c] / rates[peer]:16.2f} {trips[c] / trips[peer]:11.2f}"
        print(line)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--peer", choices=("none", "ejabberd"), default="ejabberd",
                   help="also measure ejabberd (installed by bench/setup)")
    sys.exit(asyncio.run(main(p.parse_args())))
