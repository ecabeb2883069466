"""A closed-loop HTTP load generator: N requests in flight, bounded in count and time.

One code path for every target: a target is a URL, a list of JSON bodies (used in
turn) and a check of each answer, so mailtalk and ejabberd are measured by exactly
the same client. The server's CPU time over the run is read from /proc, which gives
a figure (CPU ms per 1000 lookups) that does not depend on the client keeping up.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from pbench_util import cpu_seconds, percentile


@dataclass
class Target:
    name: str
    url: str
    bodies: list[dict[str, Any]]
    check: Callable[[int, Any], bool]      # (HTTP status, decoded JSON) -> answer is right
    pid: int | None = None                 # the server process, for CPU time
    warm_body: dict[str, Any] | None = None  # for the untimed warm-up (default: bodies[0])
    # headers that sign one request's bytes (mailtalk's signed lookups); made before the
    # timed part, one per request (a signature is used once), so that the client's
    # signing is not part of the figures
    sign: Callable[[bytes], dict[str, str]] | None = None


MAX_RATE = 20_000          # requests/s no target reaches here: signed requests made ahead


def _signed(target: Target, n: int) -> list[tuple[bytes, dict[str, str]]]:
    out = []
    assert target.sign is not None
    for i in range(n):
        data = json.dumps(target.bodies[i % len(target.bodies)]).encode()
        out.append((data, {"Content-Type": "application/json", **target.sign(data)}))
    return out


@dataclass
class Result:
    name: str
    ok: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    server_cpu_s: float | None

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    @property
    def cpu_ms_per_1000(self) -> float | None:
        if self.server_cpu_s is None or not self.ok:
            return None
        return self.server_cpu_s * 1000 / self.ok * 1000

    def line(self) -> str:
        cpu = self.cpu_ms_per_1000
        cpu_s = f"{cpu:7.0f} server-CPU-ms/1000" if cpu is not None else ""
        return (f"{self.name:<14} {self.rate:9.0f} lookups/s  p50 {self.p(50):6.2f} ms  "
                f"p99 {self.p(99):6.2f} ms  max {self.p(100):7.2f} ms  ok {self.ok:7d}  "
                f"errors {self.errors:4d}  {cpu_s}")


async def run(target: Target, concurrency: int, count: int, duration: float,
              local_ip: str | None = None) -> Result:
    """Send up to `count` requests for at most `duration` seconds, `concurrency` at a time.

    `local_ip` binds the client's connections to one loopback address of ours.
    """
    latencies: list[float] = []
    errors = 0
    sent = 0
    bodies = target.bodies
    signed = _signed(target, min(count, int(duration * MAX_RATE))) if target.sign else None
    conn = aiohttp.TCPConnector(limit=concurrency,
                                local_addr=(local_ip, 0) if local_ip else None)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
        # one untimed request per connection so that connection set-up is not measured
        async def warm() -> None:
            async with http.post(target.url, json=target.warm_body or bodies[0]) as r:
                await r.read()
        await asyncio.gather(*(warm() for _ in range(concurrency)))

        cpu0 = cpu_seconds(target.pid) if target.pid else None
        start = time.perf_counter()
        end = start + duration

        async def worker() -> None:
            nonlocal sent, errors
            while sent < count and time.perf_counter() < end:
                if signed is not None:
                    if sent >= len(signed):
                        break
                    data, headers = signed[sent]
                    request = http.post(target.url, data=data, headers=headers)
                else:
                    request = http.post(target.url, json=bodies[sent % len(bodies)])
                sent += 1
                t0 = time.perf_counter()
                try:
                    async with request as r:
                        data = await r.json(content_type=None)
                        good = target.check(r.status, data)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    good = False
                if good:
                    latencies.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(target.pid) - cpu0 if target.pid and cpu0 is not None else None
    latencies.sort()
    return Result(target.name, len(latencies), errors, seconds, latencies, cpu)
