#!/usr/bin/env python3
"""WebSocket benchmarks of mailtalk's presence service: idle users and chat fan-out.

    .venv/bin/python bench/ws_bench.py idle   [--users 10000] [--hold 20]
    .venv/bin/python bench/ws_bench.py fanout [--rate 500] [--duration 10] [--rooms 50]

idle    N users, each logged in (a web session made directly in the store) with one
        page's WebSocket (`/ws`) open, held for `--hold` seconds (longer than the
        heartbeat, so pings and pongs are part of it). Reports the service process's
        RSS before and with N connected, the delta per connection, and the RSS against
        the 300 MB target. The clients run in several processes (`--per-process`,
        bench/ws_clients.py). Then the same on ejabberd over XMPP (`--peer`).
        `--store pg-redis`: the N pages spread over `--processes` presence processes
        on a private PostgreSQL and Redis; RSS and CPU per process (idle_scaled.py).
fanout  `--rooms` rooms (one sent mail each): the sender's page (`/ws`) and
        `--members` recipients' link pages (`/ws/c/<token>`). Recipients post at
        `--rate` messages/s in all, round robin over rooms; each message carries its
        send time, and every other page of the room records when it arrived. Reports
        the delivery latency (p50, p99, max), the achieved rate and any deliveries lost.
        `--idle N` keeps N other users' pages open meanwhile. Rounds alternate with
        ejabberd MUC rooms of the same shape (`--peer`); medians.

Servers and clients are on 127.0.15.x only; every step has a deadline; it stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402

import xmpp_bench  # noqa: E402
from mailtalk import defaults as D  # noqa: E402
from idle_scaled import idle_scaled  # noqa: E402
from mailtalk_site import MailtalkSite  # noqa: E402
from ws_clients import IdlePages, first_frame, ws_headers  # noqa: E402
from pbench_util import cpu_seconds, percentile, raise_nofile, rss_bytes  # noqa: E402

log = logging.getLogger("bench.ws")

SERVICE_IP = "127.0.15.3"
FANOUT_CLIENT_IP = "127.0.15.9"
DOMAIN = "a.bench.test"
RSS_TARGET_MB = 300
SAMPLED = 50                  # users whose lookup must say online after the hold
MB = 1024 * 1024
SLOW_MS = 50.0


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--timeout", type=float, default=600.0, help="the whole run, at most")
    sub = p.add_subparsers(dest="mode", required=True)
    i = sub.add_parser("idle", help="memory per idle connected user")
    i.add_argument("--users", type=int, default=10_000)
    i.add_argument("--per-process", type=int, default=2500, help="connections per client process")
    i.add_argument("--hold", type=float, default=20.0, help="seconds to stay connected")
    i.add_argument("--connect-timeout", type=float, default=180.0)
    i.add_argument("--peer", choices=("none", "ejabberd"), default="ejabberd",
                   help="also measure ejabberd with as many idle XMPP sessions (ejabberd)")
    i.add_argument("--store", choices=("sqlite", "pg-redis"), default="sqlite",
                   help="one process on SQLite, or --processes on PostgreSQL + Redis "
                        "(bench/idle_scaled.py; no ejabberd)")
    i.add_argument("--processes", type=int, default=2, help="with --store pg-redis (2)")
    f = sub.add_parser("fanout", help="chat delivery latency at a fixed message rate")
    f.add_argument("--rate", type=float, default=500.0, help="messages per second, in all")
    f.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    f.add_argument("--rooms", type=int, default=50)
    f.add_argument("--members", type=int, default=4, help="recipients' pages per room")
    f.add_argument("--peer", choices=("none", "ejabberd"), default="ejabberd",
                   help="also measure ejabberd MUC rooms of the same shape (ejabberd)")
    f.add_argument("--rounds", type=int, default=3,
                   help="measurements of each side, interleaved; medians reported (3)")
    f.add_argument("--idle", type=int, default=0,
                   help="other users with an idle page open meanwhile, mailtalk only (0)")
    return p.parse_args()


# --- idle: the parent

def _room_for_pages(args: argparse.Namespace) -> bool:
    """Raise the open-file limit for the pages (the service, a child, inherits it and
    admits at most half of it in connections); False, said why, if it cannot be."""
    soft = raise_nofile(2 * args.users + 4096)
    per_service = args.users // (args.processes if args.store == "pg-redis" else 1)
    admitted = min(D.PRESENCE_MAX_CONNECTIONS, soft // 2)
    if per_service + SAMPLED <= admitted:
        return True
    print(f"ws_bench: the open-file limit here is {soft} (its hard limit could not be "
          f"raised), so a presence process admits {admitted} connections in all: too few "
          f"for {per_service} pages and {SAMPLED} lookups; use fewer --users", file=sys.stderr)
    return False


async def idle(args: argparse.Namespace) -> int:
    n = args.users
    if not _room_for_pages(args):
        return 2
    if args.store == "pg-redis":
        return await idle_scaled(args, SERVICE_IP, DOMAIN)
    accounts = [f"user{i}@{DOMAIN}" for i in range(n)]
    site = MailtalkSite(SERVICE_IP, DOMAIN)
    pages = IdlePages()
    try:
        t = time.monotonic()
        tokens = await site.populate(accounts, sessions_per_account=1)
        log.info("%d accounts and sessions in %.1f s", n, time.monotonic() - t)
        await site.start()
        assert site.pid is not None
        url = f"ws://{SERVICE_IP}:{site.port}/ws"
        async with aiohttp.ClientSession() as http:
            # one page opened and closed first: imports and first-use caches are not
            # counted as the cost of a connection
            async with http.ws_connect(url, headers=ws_headers(site.base_url,
                                                               tokens[accounts[0]][0])) as ws:
                await first_frame(ws, 10)
            await asyncio.sleep(0.5)
            rss0 = rss_bytes(site.pid)
            print(f"service RSS before: {rss0 / MB:.1f} MB (pid {site.pid})", flush=True)
            t0 = time.monotonic()
            ok, failed = await pages.open(url, site.base_url, [tokens[a][0] for a in accounts],
                                          args.per_process, args.connect_timeout)
            connect_s = time.monotonic() - t0
            print(f"connected {ok} of {n} pages in {connect_s:.1f} s "
                  f"({ok / connect_s:.0f}/s), {failed} failed", flush=True)
            rss1 = rss_bytes(site.pid)
            cpu0 = cpu_seconds(site.pid)
            await asyncio.sleep(args.hold)        # through at least one heartbeat
            cpu = cpu_seconds(site.pid) - cpu0
            rss2 = rss_bytes(site.pid)
            sample = accounts[:: max(1, n // SAMPLED)]
            statuses = await asyncio.gather(*(site.lookup_status(http, a) for a in sample))
            online = sum(1 for s in statuses if s == "online")
        still = await pages.close()
        per_conn = (rss2 - rss0) / max(ok, 1)
        print(f"service RSS with {ok} connected: {rss1 / MB:.1f} MB at once, "
              f"{rss2 / MB:.1f} MB after {args.hold:.0f} s held")
        print(f"still open after the hold: {still} of {ok}; lookups of {len(sample)} "
              f"sampled users: {online} online")
        print(f"RSS per connection: {per_conn / 1024:.1f} KiB "
              f"(delta {(rss2 - rss0) / MB:.1f} MB / {ok}); CPU {cpu:.2f} s in the "
              f"{args.hold:.0f} s hold ({100 * cpu / args.hold:.1f} % of a core)")
        met = rss2 < RSS_TARGET_MB * MB and ok == n
        print(f"RSS {rss2 / MB:.1f} MB vs target {RSS_TARGET_MB} MB for {n} users: "
              f"ratio {rss2 / MB / RSS_TARGET_MB:.2f} ({'met' if met else 'NOT met'})")
        good = ok == n and still == ok and online == len(sample)
    finally:
        await pages.kill()
        await site.stop()
    if args.peer == "ejabberd":
        ej = await xmpp_bench.idle(n, args.hold, args.connect_timeout)
        if ej is not None and per_conn > 0:
            print(f"ratio mailtalk/ejabberd RSS per connected user: {per_conn / ej:.2f}")
        good = good and ej is not None
    return 0 if good else 1


# --- fan-out

class Page:
    """One connected page of the fan-out run and the latencies it saw."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, who: str, room: int) -> None:
        self.ws = ws
        self.who = who
        self.room = room
        self.latencies: list[float] = []
        self.slow: list[float] = []       # send times of the slowest deliveries
        self.errors: list[str] = []

    async def read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            ev = json.loads(msg.data)
            if ev.get("type") == "message":
                text = str(ev.get("text", ""))
                if text.startswith("bench:") and ev.get("author") != self.who:
                    sent = float(text.split(":")[2])
                    ms = (time.monotonic() - sent) * 1000
                    self.latencies.append(ms)
                    if ms >= SLOW_MS:
                        self.slow.append(sent)
            elif ev.get("type") == "error":
                self.errors.append(str(ev.get("error")))


async def fanout_mailtalk(args: argparse.Namespace) -> dict[str, float] | None:
    """One fan-out measurement on a fresh mailtalk service; its figures, None if invalid."""
    rooms_n, members = args.rooms, args.members
    senders = [f"sender{i}@{DOMAIN}" for i in range(rooms_n)]
    idlers = [f"idle{i}@{DOMAIN}" for i in range(args.idle)]
    raise_nofile(args.idle + 4096)
    site = MailtalkSite(SERVICE_IP, DOMAIN)
    pages: list[Page] = []
    readers: list[asyncio.Task[None]] = []
    idle_pages = IdlePages()
    try:
        tokens = await site.populate(senders + idlers, sessions_per_account=1)
        rooms = await site.populate_rooms(
            [(s, [f"r{j}.{i}@b.bench.test" for j in range(members)])
             for i, s in enumerate(senders)])
        await site.start()
        assert site.pid is not None
        base = f"ws://{SERVICE_IP}:{site.port}"
        if idlers:          # other users connected meanwhile, idle: heartbeats, memory
            ok, _ = await idle_pages.open(f"{base}/ws", site.base_url,
                                          [tokens[a][0] for a in idlers], 2500, 180)
            if ok != len(idlers):
                raise RuntimeError(f"only {ok} of {len(idlers)} idle pages opened")
        conn = aiohttp.TCPConnector(limit=0, local_addr=(FANOUT_CLIENT_IP, 0))
        async with aiohttp.ClientSession(connector=conn) as http:
            writers: list[list[Page]] = []       # per room: the recipients' pages (they post)
            for i, (_, links) in enumerate(rooms):
                ws = await http.ws_connect(
                    f"{base}/ws", headers=ws_headers(site.base_url, tokens[senders[i]][0]))
                await first_frame(ws, 10)
                pages.append(Page(ws, senders[i], i))
                room_writers = []
                for rcpt, tok in links.items():
                    ws = await http.ws_connect(f"{base}/ws/c/{tok}",
                                               headers=ws_headers(site.base_url))
                    await first_frame(ws, 10)
                    page = Page(ws, rcpt, i)
                    pages.append(page)
                    room_writers.append(page)
                writers.append(room_writers)
            readers = [asyncio.create_task(p.read()) for p in pages]
            total = int(args.rate * args.duration)
            mail_ids = [m for m, _ in rooms]
            cpu0 = cpu_seconds(site.pid)
            t0 = time.monotonic()
            for k in range(total):
                delay = t0 + k / args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                room = k % rooms_n
                page = writers[room][(k // rooms_n) % members]
                await page.ws.send_str(json.dumps(
                    {"type": "send", "mail_id": mail_ids[room],
                     "text": f"bench:{k}:{time.monotonic():.6f}"}))
            send_s = time.monotonic() - t0
            expected = total * members          # the room's other pages: sender + members-1
            deadline = time.monotonic() + 15

            def got() -> int:
                return sum(len(p.latencies) for p in pages)
            while got() < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            cpu = cpu_seconds(site.pid) - cpu0
            lat = sorted(x for p in pages for x in p.latencies)
            # When the slow deliveries were sent (s into the run): one stall or many?
            slow = sorted({round(x - t0, 1) for p in pages for x in p.slow})
            errors = [e for p in pages for e in p.errors]
            for p in pages:
                await p.ws.close()
        rate = total / send_s
        if idlers:
            print(f"mailtalk: {await idle_pages.close()} of {len(idlers)} idle pages were "
                  f"connected throughout")
        print(f"mailtalk: rooms {rooms_n}, pages per room {members + 1}, {total} messages in "
              f"{send_s:.1f} s: {rate:.0f} msg/s (target {args.rate:.0f}, ratio "
              f"{rate / args.rate:.2f})")
        print(f"mailtalk: deliveries {len(lat)} of {expected} ({expected - len(lat)} missing), "
              f"error frames {len(errors)}{' ' + repr(errors[:3]) if errors else ''}")
        print(f"mailtalk: delivery latency p50 {percentile(lat, 50):.2f} ms  "
              f"p99 {percentile(lat, 99):.2f} ms  max {percentile(lat, 100):.2f} ms; CPU "
              f"{cpu / send_s * 100:.0f} % of one core, RSS {rss_bytes(site.pid) / MB:.1f} MB",
              flush=True)
        if slow:
            print(f"mailtalk: deliveries of {SLOW_MS:.0f} ms or more were sent at (s): "
                  f"{' '.join(f'{x:.1f}' for x in slow[:20])}{' ...' if len(slow) > 20 else ''}")
        if len(lat) != expected or errors:
            return None
        return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "cpu": cpu / send_s}
    finally:
        for t in readers:
            t.cancel()
        await idle_pages.kill()
        await site.stop()


async def fanout(args: argparse.Namespace) -> int:
    """Rounds of mailtalk then ejabberd (interleaved: both meet the same machine load)."""
    runs: dict[str, list[dict[str, float]]] = {"mailtalk": [], "ejabberd": []}
    good = True
    for rnd in range(1, args.rounds + 1):
        print(f"-- round {rnd} (load average {os.getloadavg()[0]:.2f})", flush=True)
        m = await fanout_mailtalk(args)
        good = good and m is not None
        if m is not None:
            runs["mailtalk"].append(m)
        if args.peer == "ejabberd":
            e = await xmpp_bench.fanout(args.rate, args.duration, args.rooms, args.members)
            good = good and e is not None
            if e is not None:
                runs["ejabberd"].append(e)
    med = {side: {k: statistics.median(r[k] for r in rs) for k in ("p50", "p99", "cpu")}
           for side, rs in runs.items() if rs}
    print(f"\n== median of {args.rounds} round(s) at {args.rate:.0f} msg/s, "
          f"{args.rooms} rooms x {args.members + 1} pages ==")
    for side, f in med.items():
        print(f"{side:<9} delivery p50 {f['p50']:7.2f} ms  p99 {f['p99']:7.2f} ms  "
              f"server CPU {f['cpu'] * 100:3.0f} % of one core")
    if len(med) == 2:
        m_, e_ = med["mailtalk"], med["ejabberd"]
        print(f"ratio mailtalk/ejabberd: p50 {m_['p50'] / e_['p50']:.2f}  "
              f"p99 {m_['p99'] / e_['p99']:.2f}  server CPU {m_['cpu'] / e_['cpu']:.2f}")
    return 0 if good else 1


async def main(args: argparse.Namespace) -> int:
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
          f"(other work on the machine skews latency figures)", flush=True)
    try:
        if args.mode == "idle":
            return await idle(args)
        return await fanout(args)
    finally:
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    a = _args()
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        sys.exit(asyncio.run(asyncio.wait_for(main(a), a.timeout)))
    except asyncio.TimeoutError:
        print(f"ws_bench: gave up after {a.timeout:.0f} s", file=sys.stderr)
        sys.exit(2)
