#!/usr/bin/env python3
"""Presence lookups: mailtalk's POST /api/v1/lookup beside ejabberd's get_presence.

    .venv/bin/python bench/presence_bench.py [--concurrency 32] [--duration 8] [--rounds 3] ...

One run, one client process, the same load generator (bench/loadgen.py) for every
target, `--concurrency` requests in flight, each measurement bounded by `--count`
requests and `--duration` seconds; targets are measured in turn, `--rounds` times
(interleaved, so a warm-up or a noisy neighbour does not favour one side). Reported:
every round, the best round of each target, and the ratios to ejabberd (best rounds,
and the median of each round's own ratio). Any wrong answer fails the run (exit 1).

Targets, all asking "is this sender there?" about `--accounts` accounts:
  ejabberd        Debian's ejabberd, mod_http_api `get_presence` (private instance,
                  bench/ejabberd_peer.py), users registered, `--online` of them online
                  over XMPP.
  mailtalk        `POST /api/v1/lookup` with valid Mail-IDs (made with the site key the
                  service uses) that were looked up before (a retried delivery), signed
                  as a receiving hook signs (RFC 9421, Ed25519; the signatures are made
                  before the timed part, one per request);
                  `--online` of the accounts have a page's WebSocket open (online).
  mailtalk-fresh  the same with a Mail-ID never seen before in every request: what a
                  receiving MTA really sends, one lookup per delivered mail (the
                  service verifies the Mail-ID and makes the recipient's self-verifying
                  link; since 450eb61 it stores nothing, see docs/presence.md).
  aiohttp-floor   a reference, not a peer: a minimal aiohttp app with a fixed answer
                  (bench/floor_server.py), the cost of any one-process aiohttp service
                  here before any work of its own.
Servers and client use loopback addresses 127.0.15.x only; everything stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402

import loadgen  # noqa: E402
from ejabberd_peer import EjabberdPeer  # noqa: E402
from mailtalk_site import MailtalkSite  # noqa: E402
from pbench_util import free_port, wait_for  # noqa: E402
from xmpp_online import XmppSession, go_online  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from mailtalk.lookup_signing import public_key_text, sign  # noqa: E402

log = logging.getLogger("bench.presence")

EJABBERD_IP = "127.0.15.2"
MAILTALK_IP = "127.0.15.3"
CLIENT_IP = "127.0.15.4"
FLOOR_IP = "127.0.15.5"
ALL_TARGETS = "ejabberd,mailtalk,mailtalk-fresh,aiohttp-floor"
SENDER_DOMAIN = "a.bench.test"
RECIPIENT = "bob@b.bench.test"
STATUSES = {"online", "away", "busy", "offline"}
XMPP_PASSWORD = "bench-password"


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight (32)")
    p.add_argument("--count", type=int, default=100_000, help="requests per measurement, at most")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement, at most")
    p.add_argument("--rounds", type=int, default=3, help="measurements of each target (3)")
    p.add_argument("--accounts", type=int, default=1000, help="accounts asked about (1000)")
    p.add_argument("--online", type=int, default=100,
                   help="of those, users kept online: XMPP on ejabberd, a WebSocket "
                        "page on mailtalk (100)")
    p.add_argument("--targets", default=ALL_TARGETS,
                   help=f"comma-separated subset of {ALL_TARGETS}")
    p.add_argument("--log-level", default="warning",
                   help="mailtalk's [site] log_level (warning; info logs every request)")
    p.add_argument("--timeout", type=float, default=600.0, help="the whole run, at most")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args()


# answers seen per target, to show that both sides answered about online users too
ANSWERS: dict[str, Counter[str]] = {"ejabberd": Counter(), "mailtalk": Counter()}


def _mailtalk_ok(status: int, data: object) -> bool:
    # A valid Mail-ID must get a real status and the recipient's link; "unknown"
    # would mean the service did not accept the Mail-ID: counted as an error.
    if not (status == 200 and isinstance(data, dict)):
        return False
    ok = data.get("status") in STATUSES and RECIPIENT in (data.get("links") or {})
    if ok:
        ANSWERS["mailtalk"][str(data.get("status"))] += 1
    return ok


def _ejabberd_ok(status: int, data: object) -> bool:
    if not (status == 200 and isinstance(data, dict) and "show" in data):
        return False
    ANSWERS["ejabberd"][str(data.get("show"))] += 1
    return True


async def _ejabberd_target(peer: EjabberdPeer, users: list[str], online: int,
                           sessions: list[XmppSession]) -> loadgen.Target:
    async with aiohttp.ClientSession() as http:
        await peer.register(http, users, XMPP_PASSWORD)
    for u in users[:online]:
        sessions.append(await go_online(peer.ip, peer.c2s_port, peer.host, u, XMPP_PASSWORD))
    return loadgen.Target("ejabberd", f"{peer.api_url}/get_presence",
                          [{"user": u, "server": peer.host} for u in users],
                          _ejabberd_ok, peer.pid)


async def _mailtalk_online(site: MailtalkSite, tokens: dict[str, list[str]],
                           accounts: list[str], http: aiohttp.ClientSession
                           ) -> list[aiohttp.ClientWebSocketResponse]:
    """Open one page's WebSocket per account (with its session cookie): online users."""
    pages = []
    for a in accounts:
        ws = await http.ws_connect(f"ws://{site.ip}:{site.port}/ws", headers={
            "Origin": site.base_url, "Cookie": f"mt_session={tokens[a][0]}"})
        await ws.receive(timeout=10)              # the hello frame
        pages.append(ws)
    return pages


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:       # reading answers the service's heartbeat pings
        pass


# The recipients' site's hook key: b.bench.test publishes it (the site's [dns] static),
# and every mailtalk lookup is signed with it, as a receiving hook signs (RFC 9421).
HOOK_KEY = Ed25519PrivateKey.generate()
HOOK_DNS = (f'[dns]\nstatic = {{ "b.bench.test" = "v=mailtalk1; api=http://127.0.0.1:9; '
            f'k={public_key_text(HOOK_KEY)}" }}\n')


def _sign(data: bytes) -> dict[str, str]:
    return sign(HOOK_KEY, "b.bench.test", "POST", "/api/v1/lookup", data, int(time.time()))


def _mailtalk_targets(site: MailtalkSite, accounts: list[str], fresh_count: int,
                      wanted: set[str]) -> list[loadgen.Target]:
    url = f"{site.base_url}/api/v1/lookup"
    out = []
    if "mailtalk" in wanted:
        bodies = [{"account": a, "mail_id": site.mail_ids.issue(a), "recipients": [RECIPIENT]}
                  for a in accounts]
        out.append(loadgen.Target("mailtalk", url, bodies, _mailtalk_ok, site.pid, sign=_sign))
    if "mailtalk-fresh" in wanted:
        # Every measured request carries a Mail-ID the service has never seen; the
        # warm-up asks about one more of its own.
        bodies = [{"account": accounts[i % len(accounts)],
                   "mail_id": site.mail_ids.issue(accounts[i % len(accounts)]),
                   "recipients": [RECIPIENT]} for i in range(fresh_count)]
        warm = {"account": accounts[0], "mail_id": site.mail_ids.issue(accounts[0]),
                "recipients": [RECIPIENT]}
        out.append(loadgen.Target("mailtalk-fresh", url, bodies, _mailtalk_ok, site.pid, warm,
                                  sign=_sign))
    return out


async def _start_floor() -> tuple[asyncio.subprocess.Process, loadgen.Target]:
    port = free_port(FLOOR_IP)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("floor_server.py")), FLOOR_IP, str(port))
    url = f"http://{FLOOR_IP}:{port}/api/v1/lookup"
    body = {"account": "user0@a.bench.test", "mail_id": "x" * 44, "recipients": [RECIPIENT]}
    async with aiohttp.ClientSession() as http:
        async def ready() -> bool:
            async with http.post(url, json=body) as r:
                return r.status == 200
        await wait_for(ready, 15, "floor server")
    return proc, loadgen.Target("aiohttp-floor", url, [body],
                                lambda s, d: s == 200 and isinstance(d, dict), proc.pid)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:5.2f}" if a is not None and b else "  n/a"


def _report(best: dict[str, loadgen.Result], rounds: list[dict[str, loadgen.Result]],
            args: argparse.Namespace) -> None:
    print(f"\n== best of {args.rounds} round(s), concurrency {args.concurrency}, "
          f"{args.accounts} accounts, {os.cpu_count()} CPUs (client and servers share them), "
          f"load average now {os.getloadavg()[0]:.2f} ==")
    for r in best.values():
        print(r.line())
    for side, seen in ANSWERS.items():
        if seen:
            total = sum(seen.values())
            print(f"answers from {side}: " + ", ".join(
                f"{k} {v * 100 / total:.0f} %" for k, v in seen.most_common()))
    ej = best.get("ejabberd")
    if ej is None:
        return
    for name in ("mailtalk", "mailtalk-fresh", "aiohttp-floor"):
        if name not in best:
            continue
        r = best[name]
        print(f"ratio {name}/ejabberd: lookups/s {_ratio(r.rate, ej.rate)}   "
              f"p99 {_ratio(r.p(99), ej.p(99))}   server CPU per lookup "
              f"{_ratio(r.cpu_ms_per_1000, ej.cpu_ms_per_1000)}   (best rounds)")
        # the same ratio within each round (neighbours in time), then the median
        same = [(rr[name], rr["ejabberd"]) for rr in rounds if name in rr and "ejabberd" in rr]
        if same:
            rate = statistics.median(a.rate / b.rate for a, b in same if b.rate)
            p99 = statistics.median(a.p(99) / b.p(99) for a, b in same if b.p(99))
            print(f"ratio {name}/ejabberd: lookups/s {rate:5.2f}   p99 {p99:5.2f}   "
                  f"(median over rounds of each round's ratio)")


async def main(args: argparse.Namespace) -> int:
    wanted = {t.strip() for t in args.targets.split(",") if t.strip()}
    accounts = [f"user{i}@{SENDER_DOMAIN}" for i in range(args.accounts)]
    peer = EjabberdPeer(EJABBERD_IP, "b.bench.test") if "ejabberd" in wanted else None
    site = MailtalkSite(MAILTALK_IP, SENDER_DOMAIN, log_level=args.log_level,
                        extra_config=HOOK_DNS) \
        if wanted & {"mailtalk", "mailtalk-fresh"} else None
    sessions: list[XmppSession] = []
    ws_http: aiohttp.ClientSession | None = None
    drains: list[asyncio.Task[None]] = []
    targets: list[loadgen.Target] = []
    floor: asyncio.subprocess.Process | None = None
    try:
        if peer is not None:
            await peer.start()
            targets.append(await _ejabberd_target(
                peer, [a.split("@")[0] for a in accounts], args.online, sessions))
        if site is not None:
            tokens = await site.populate(accounts, sessions_per_account=1)
            await site.start()
            ws_http = aiohttp.ClientSession()
            pages = await _mailtalk_online(site, tokens, accounts[:args.online], ws_http)
            drains = [asyncio.create_task(_drain(p)) for p in pages]
            # enough fresh Mail-IDs for every round even at 20,000 lookups/s
            fresh = min(args.count, int(args.duration * 20_000)) * args.rounds
            targets += _mailtalk_targets(site, accounts, fresh, wanted)
        if "aiohttp-floor" in wanted:
            floor, t = await _start_floor()
            targets.append(t)
        for t in targets:
            if t.name == "mailtalk":   # one untimed pass: every link exists before timing
                await loadgen.run(t, args.concurrency, len(t.bodies), args.timeout, CLIENT_IP)
        print(f"load average before: {os.getloadavg()[0]:.2f} (other work on the machine "
              f"skews the figures: compare targets within one run)", flush=True)
        best: dict[str, loadgen.Result] = {}
        rounds: list[dict[str, loadgen.Result]] = []
        fresh_pos = 0
        for rnd in range(1, args.rounds + 1):
            rounds.append({})
            for t in targets:
                if t.name == "mailtalk-fresh":      # never reuse a Mail-ID across rounds
                    t = dataclasses.replace(t, bodies=t.bodies[fresh_pos:])
                count = min(args.count, len(t.bodies)) if t.name == "mailtalk-fresh" \
                    else args.count
                r = await loadgen.run(t, args.concurrency, count, args.duration, CLIENT_IP)
                if t.name == "mailtalk-fresh":
                    fresh_pos += r.ok + r.errors
                print(f"round {rnd}: {r.line()}", flush=True)
                rounds[-1][t.name] = r
                if t.name not in best or r.rate > best[t.name].rate:
                    best[t.name] = r
        _report(best, rounds, args)
        failed = sorted({r.name for rr in rounds for r in rr.values() if r.errors or not r.ok})
        if failed:
            print(f"errors from: {', '.join(failed)} (see above)", file=sys.stderr)
            return 1
        return 0
    finally:
        for s in sessions:
            s.close()
        for d in drains:
            d.cancel()
        if ws_http is not None:
            await ws_http.close()
        if floor is not None and floor.returncode is None:
            floor.terminate()
            await floor.wait()
        if site is not None:
            await site.stop()
        if peer is not None:
            await peer.stop()


if __name__ == "__main__":
    a = _args()
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        sys.exit(asyncio.run(asyncio.wait_for(main(a), a.timeout)))
    except asyncio.TimeoutError:
        print(f"presence_bench: gave up after {a.timeout:.0f} s", file=sys.stderr)
        sys.exit(2)
