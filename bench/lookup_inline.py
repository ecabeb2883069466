#!/usr/bin/env python3
"""Experiment: what the SQLite worker-thread hop costs the lookup API.

    .venv/bin/python bench/lookup_inline.py [--rounds 3] [--duration 5]

The presence service runs every store call in one worker thread (run_in_executor).
This runs the same service twice per round, as it is ("thread") and with
`SqliteStore._run` calling the function directly on the event loop ("inline"), and
measures lookups (links exist) and fresh lookups (new Mail-ID each) on both, with the
load generator of presence_bench.py. Not a proposal to block the loop with SQLite as
is (a write waiting on the disk would stall every request); a measure of how much
of the lookup's cost is the hop itself.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
from mailtalk_site import MailtalkSite  # noqa: E402

T = TypeVar("T")
SERVICE_IP = "127.0.15.3"
CLIENT_IP = "127.0.15.4"
DOMAIN = "a.bench.test"
RECIPIENT = "bob@b.bench.test"


def serve(config: str, mode: str) -> None:
    """The child: the presence service as `mailtalk presence` builds it, store varied."""
    from aiohttp import web

    from mailtalk.config import load_file
    from presence_api import server
    from presence_api.store_sqlite import SqliteStore, sqlite_path

    class InlineStore(SqliteStore):
        async def _run(self, fn: Callable[..., T], *args: Any) -> T:
            return fn(*args)

    cfg = load_file(config)
    store = InlineStore(sqlite_path(cfg.presence.database)) if mode == "inline" else None
    web.run_app(server.make_app(cfg, store=store), host=cfg.presence.listen.host,
                port=cfg.presence.listen.port, access_log=None, print=None)


def _ok(status: int, data: object) -> bool:
    return status == 200 and isinstance(data, dict) and RECIPIENT in (data.get("links") or {})


async def measure(mode: str, args: argparse.Namespace) -> dict[str, float]:
    site = MailtalkSite(SERVICE_IP, DOMAIN)
    try:
        accounts = [f"user{i}@{DOMAIN}" for i in range(1000)]
        await site.populate(accounts)
        await site.start([sys.executable, __file__, "--serve", mode])
        url = f"{site.base_url}/api/v1/lookup"
        read = [{"account": a, "mail_id": site.mail_ids.issue(a), "recipients": [RECIPIENT]}
                for a in accounts]
        fresh = [{"account": accounts[i % 1000], "mail_id": site.mail_ids.issue(
            accounts[i % 1000]), "recipients": [RECIPIENT]} for i in range(40_000)]
        await loadgen.run(loadgen.Target("prime", url, read, _ok), 32, len(read), 60, CLIENT_IP)
        out = {}
        for name, bodies in (("read", read), ("fresh", fresh)):
            count = len(bodies) if name == "fresh" else 1_000_000    # reads cycle
            r = await loadgen.run(loadgen.Target(f"{mode}-{name}", url, bodies, _ok, site.pid),
                                  32, count, args.duration, CLIENT_IP)
            print(r.line(), flush=True)
            if r.errors:
                raise RuntimeError(f"{r.errors} wrong answers from {mode}-{name}")
            out[name] = r.rate
            out[f"{name}-cpu"] = r.cpu_ms_per_1000 or 0.0
        return out
    finally:
        await site.stop()


async def main(args: argparse.Namespace) -> int:
    runs: dict[str, list[dict[str, float]]] = {"thread": [], "inline": []}
    for _ in range(args.rounds):
        for mode in runs:
            runs[mode].append(await measure(mode, args))
    for name in ("read", "fresh"):
        t, i = (statistics.median(r[name] for r in runs[m]) for m in ("thread", "inline"))
        tc, ic = (statistics.median(r[f"{name}-cpu"] for r in runs[m])
                  for m in ("thread", "inline"))
        # CPU per lookup is the steadier figure on a shared machine; rates follow load
        print(f"{name}: thread {t:.0f}/s {tc:.0f} CPU-ms/1000, inline {i:.0f}/s "
              f"{ic:.0f} CPU-ms/1000: inline/thread rate {i / t:.2f}, CPU {ic / tc:.2f} "
              f"(medians of {args.rounds})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[3], sys.argv[2])
        sys.exit(0)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=300.0)
    a = p.parse_args()
    sys.exit(asyncio.run(asyncio.wait_for(main(a), a.timeout)))
