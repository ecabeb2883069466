"""`ws_bench.py idle --store pg-redis`: idle pages spread over several presence
processes on one private PostgreSQL and Redis (as behind a load balancer).

Per process: RSS before and with its pages, KiB per page, and the CPU it used while
the pages were held (with Redis each process republishes its pages' presence every
heartbeat, and hears every other process's). Then lookups at the first process for
sampled users whose page is on another must say online (the shared presence).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp

from mailtalk_site import MailtalkSite
from pbench_util import cpu_seconds, rss_bytes
from ws_clients import IdlePages, first_frame, ws_headers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.postgres import Postgres  # noqa: E402  (tests/support: private servers)
from support.redis import Redis  # noqa: E402

MB = 1024 * 1024


async def _start_sites(stack: AsyncExitStack, args: argparse.Namespace, ip: str,
                       domain: str) -> list[MailtalkSite]:
    pg, redis = Postgres().start(), Redis().start()
    stack.callback(pg.remove)
    stack.callback(redis.remove)
    keys = Path(tempfile.mkdtemp(prefix="mailtalk-bench-key-"))
    stack.callback(shutil.rmtree, keys, True)
    key = keys / "site.key"                            # one site: one key
    sites = [MailtalkSite(ip, domain, database_url=pg.url, redis_url=redis.url, key_file=key)
             for _ in range(args.processes)]
    for site in sites:
        stack.push_async_callback(site.stop)
    return sites


async def _warm(sites: list[MailtalkSite], token: str) -> None:
    """One page opened and closed at each process first: imports and first-use caches
    are not counted as the cost of a page."""
    async with aiohttp.ClientSession() as http:
        for site in sites:
            async with http.ws_connect(f"ws://{site.ip}:{site.port}/ws",
                                       headers=ws_headers(site.base_url, token)) as ws:
                await first_frame(ws, 10)
    await asyncio.sleep(0.5)


async def idle_scaled(args: argparse.Namespace, ip: str, domain: str) -> int:
    n, procs = args.users, args.processes
    accounts = [f"user{i}@{domain}" for i in range(n)]
    async with AsyncExitStack() as stack:
        sites = await _start_sites(stack, args, ip, domain)
        t = time.monotonic()
        tokens = await sites[0].populate(accounts, sessions_per_account=1)
        print(f"{n} accounts and sessions in PostgreSQL in {time.monotonic() - t:.1f} s",
              flush=True)
        for site in sites:
            await site.start()
        await _warm(sites, tokens[accounts[0]][0])
        pids = [s.pid for s in sites]
        assert all(p is not None for p in pids)
        rss0 = [rss_bytes(p) for p in pids]            # type: ignore[arg-type]
        shares = [accounts[k::procs] for k in range(procs)]    # page of account i: i % procs
        pages = [IdlePages() for _ in sites]
        for p in pages:
            stack.push_async_callback(p.kill)
        t0 = time.monotonic()
        opened = await asyncio.gather(*(
            p.open(f"ws://{s.ip}:{s.port}/ws", s.base_url, [tokens[a][0] for a in share],
                   args.per_process, args.connect_timeout)
            for p, s, share in zip(pages, sites, shares)))
        ok = sum(o for o, _ in opened)
        print(f"connected {ok} of {n} pages over {procs} processes in "
              f"{time.monotonic() - t0:.1f} s, {sum(f for _, f in opened)} failed", flush=True)
        cpu0 = [cpu_seconds(p) for p in pids]          # type: ignore[arg-type]
        await asyncio.sleep(args.hold)                 # through at least one heartbeat
        cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0)]   # type: ignore[arg-type]
        rss = [rss_bytes(p) for p in pids]             # type: ignore[arg-type]
        # users whose page is on another process than the one asked (with one
        # process: on that one)
        sample = [accounts[i] for i in range(1, n, max(1, n // 50)) if procs == 1 or i % procs]
        async with aiohttp.ClientSession() as http:
            statuses = await asyncio.gather(*(sites[0].lookup_status(http, a)
                                              for a in sample))
        online = sum(1 for s in statuses if s == "online")
        still = sum([await p.close() for p in pages])
    for k in range(procs):
        print(f"process {k + 1}: {opened[k][0]} pages, RSS {rss0[k] / MB:.1f} -> "
              f"{rss[k] / MB:.1f} MB, {(rss[k] - rss0[k]) / max(opened[k][0], 1) / 1024:.1f} "
              f"KiB per page, CPU {cpu[k]:.2f} s in the {args.hold:.0f} s hold "
              f"({100 * cpu[k] / args.hold:.1f} % of a core)")
    where = "elsewhere" if procs > 1 else "there"
    print(f"still open after the hold: {still} of {ok}; lookups at process 1 of "
          f"{len(sample)} users with a page {where}: {online} online")
    return 0 if ok == n and still == ok and online == len(sample) else 1
