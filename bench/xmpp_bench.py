"""The ejabberd side of bench/ws_bench.py: idle XMPP sessions and MUC fan-out.

The same questions as the mailtalk side, asked of a private ejabberd 23.01
(bench/ejabberd_peer.py) over plain c2s on loopback with bench/xmpp_online.py:
  idle    N users logged in with initial presence, held; RSS of the beam process.
  fanout  rooms of mod_muc (made with create_room over the HTTP API), each with
          1 + members occupants; members post groupchat messages at a fixed rate;
          every other occupant records the arrival. ejabberd keeps MUC history in
          memory only here (no mod_mam); mailtalk writes each message to SQLite.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp

from ejabberd_peer import EjabberdPeer
from pbench_util import cpu_seconds, percentile, rss_bytes
from xmpp_online import XmppSession, open_many

EJABBERD_IP = "127.0.15.2"
XMPP_HOST = "b.bench.test"
XMPP_PASSWORD = "bench-password"
MB = 1024 * 1024
MUC_NS = "http://jabber.org/protocol/muc"


async def idle(n: int, hold: float, timeout: float) -> float | None:
    """The same N users idle on ejabberd over XMPP (c2s); its RSS per session, in bytes."""
    peer = EjabberdPeer(EJABBERD_IP, XMPP_HOST)
    sessions: list[XmppSession] = []
    try:
        await peer.start()
        assert peer.pid is not None
        users = [f"user{i}" for i in range(n)]
        async with aiohttp.ClientSession() as http:
            await peer.register(http, users, XMPP_PASSWORD)
            # one session opened and closed first, as on the mailtalk side
            first, _ = await open_many(peer.ip, peer.c2s_port, peer.host, users[:1], XMPP_PASSWORD)
            for x in first:
                x.close()
            await asyncio.sleep(0.5)
            rss0 = rss_bytes(peer.pid)
            print(f"ejabberd RSS before: {rss0 / MB:.1f} MB (beam pid {peer.pid})", flush=True)
            t0 = time.monotonic()
            try:
                sessions, failed = await asyncio.wait_for(
                    open_many(peer.ip, peer.c2s_port, peer.host, users, XMPP_PASSWORD), timeout)
            except asyncio.TimeoutError:
                print(f"ejabberd: {n} XMPP log-ins not done within {timeout:.0f} s")
                return None
            print(f"ejabberd: {len(sessions)} of {n} users online over XMPP in "
                  f"{time.monotonic() - t0:.1f} s, {failed} failed", flush=True)
            await asyncio.sleep(hold)
            rss2 = rss_bytes(peer.pid)
            sample = users[:: max(1, n // 50)]
            online = 0
            for u in sample:
                async with http.post(f"{peer.api_url}/get_presence",
                                     json={"user": u, "server": peer.host}) as r:
                    online += (await r.json()).get("show") == "available"
        per = (rss2 - rss0) / max(len(sessions), 1)
        print(f"ejabberd RSS with {len(sessions)} online: {rss2 / MB:.1f} MB after "
              f"{hold:.0f} s held; {online} of {len(sample)} sampled users available; "
              f"RSS per session {per / 1024:.1f} KiB")
        return per if failed == 0 and online == len(sample) else None
    finally:
        for x in sessions:
            x.close()
        await peer.stop()


_MSG_RE = re.compile(r"<message\b([^>]*)>(.*?)</message>", re.S)
_FROM_RE = re.compile(r"""from=(['"])(.*?)\1""")
_BODY_RE = re.compile(r"<body>bench:(\d+):([0-9.]+)</body>")


class Occupant:
    """One user in one MUC room, recording when other occupants' messages arrive."""

    def __init__(self, session: XmppSession, room_jid: str, nick: str) -> None:
        self.s = session
        self.room_jid = room_jid
        self.nick = nick
        self.latencies: list[float] = []
        self.errors = 0

    async def join(self) -> None:
        self.s.send(f"<presence to='{self.room_jid}/{self.nick}'><x xmlns='{MUC_NS}'>"
                    f"<history maxstanzas='0'/></x></presence>")
        await self.s.expect(r"code=['\"]110['\"]")       # our own presence in the room

    def post(self, k: int) -> None:
        self.s.send(f"<message to='{self.room_jid}' type='groupchat'>"
                    f"<body>bench:{k}:{time.monotonic():.6f}</body></message>")

    async def read(self) -> None:
        while True:
            chunk = await self.s.reader.read(65536)
            now = time.monotonic()
            if not chunk:
                return
            self.s.buf += chunk.decode("utf-8", "replace")
            pos = 0
            for m in _MSG_RE.finditer(self.s.buf):
                pos = m.end()
                attrs, inner = m.group(1), m.group(2)
                if "type='error'" in attrs or 'type="error"' in attrs:
                    self.errors += 1
                    continue
                body = _BODY_RE.search(inner)
                frm = _FROM_RE.search(attrs)
                if body and frm and frm.group(2).rsplit("/", 1)[-1] != self.nick:
                    self.latencies.append((now - float(body.group(2))) * 1000)
            self.s.buf = self.s.buf[pos:] if pos else self.s.buf[-65536:]


async def fanout(rate: float, duration: float, rooms_n: int, members: int
                 ) -> dict[str, float] | None:
    """MUC rooms of 1 + members occupants; members post at `rate` in all. Figures or None."""
    peer = EjabberdPeer(EJABBERD_IP, XMPP_HOST)
    occupants: list[Occupant] = []
    readers: list[asyncio.Task[None]] = []
    try:
        await peer.start()
        assert peer.pid is not None
        service = f"conference.{XMPP_HOST}"
        names = [[f"s{i}"] + [f"r{j}.{i}" for j in range(members)] for i in range(rooms_n)]
        async with aiohttp.ClientSession() as http:
            await peer.register(http, [u for room in names for u in room], XMPP_PASSWORD)
            for i in range(rooms_n):
                async with http.post(f"{peer.api_url}/create_room", json={
                        "name": f"room{i}", "service": service, "host": XMPP_HOST}) as r:
                    if r.status != 200:
                        raise RuntimeError(f"create_room: {r.status} {await r.text()}")
        writers: list[list[Occupant]] = []
        for i, room in enumerate(names):
            sessions, failed = await open_many(peer.ip, peer.c2s_port, XMPP_HOST, room,
                                               XMPP_PASSWORD)
            if failed:
                raise RuntimeError(f"{failed} XMPP log-ins failed")
            by_user = {x.user: x for x in sessions}
            room_occ = [Occupant(by_user[u], f"room{i}@{service}", u) for u in room]
            for o in room_occ:
                await o.join()
            occupants += room_occ
            writers.append(room_occ[1:])
        readers = [asyncio.create_task(o.read()) for o in occupants]
        total = int(rate * duration)
        cpu0 = cpu_seconds(peer.pid)
        t0 = time.monotonic()
        for k in range(total):
            delay = t0 + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            writers[k % rooms_n][(k // rooms_n) % members].post(k)
        send_s = time.monotonic() - t0
        expected = total * members
        deadline = time.monotonic() + 15
        while sum(len(o.latencies) for o in occupants) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        cpu = cpu_seconds(peer.pid) - cpu0
        lat = sorted(x for o in occupants for x in o.latencies)
        errors = sum(o.errors for o in occupants)
        print(f"ejabberd MUC: rooms {rooms_n}, occupants per room {members + 1}, {total} "
              f"messages in {send_s:.1f} s: {total / send_s:.0f} msg/s")
        print(f"ejabberd MUC: deliveries {len(lat)} of {expected} ({expected - len(lat)} "
              f"missing), error stanzas {errors}")
        print(f"ejabberd MUC: delivery latency p50 {percentile(lat, 50):.2f} ms  p99 "
              f"{percentile(lat, 99):.2f} ms  max {percentile(lat, 100):.2f} ms; CPU "
              f"{cpu / send_s * 100:.0f} % of one core, RSS {rss_bytes(peer.pid) / MB:.1f} MB")
        if len(lat) != expected or errors:
            return None
        return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "cpu": cpu / send_s}
    finally:
        for t in readers:
            t.cancel()
        for o in occupants:
            o.s.close()
        await peer.stop()
