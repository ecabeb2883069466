#!/usr/bin/env python3
"""Many idle WebSocket pages of mailtalk users, held open by several client processes.

`IdlePages.open()` starts `ws_clients.py` children, one per `per_process` pages; each
reads its job (one JSON line on stdin), opens its pages with the users' session
cookies, answers the service's pings, prints `ready OK FAILED`, and on any further
line on stdin closes them and prints `closed STILL_OPEN`. Spreading the pages over
processes keeps the client side from being what limits the service.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time

import aiohttp

from pbench_util import raise_nofile

SESSION_COOKIE = "mt_session"
CLIENT_IPS = [f"127.0.15.{i}" for i in range(10, 30)]


def ws_headers(origin: str, session: str | None = None) -> dict[str, str]:
    h = {"Origin": origin}
    if session:
        h["Cookie"] = f"{SESSION_COOKIE}={session}"
    return h


async def first_frame(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> dict[str, object]:
    msg = await ws.receive(timeout=timeout)
    if msg.type != aiohttp.WSMsgType.TEXT:
        raise ConnectionError(f"expected a hello frame, got {msg.type!r}")
    return dict(json.loads(msg.data))


async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Read (and so answer the server's pings) until the socket closes."""
    async for _ in ws:
        pass


async def client_main() -> int:
    """A child: job as one JSON line on stdin; 'ready' on stdout; any line stops it."""
    job = json.loads(sys.stdin.readline())
    raise_nofile(len(job["tokens"]) + 1000)
    deadline = time.monotonic() + job["timeout"]
    sem = asyncio.Semaphore(64)            # handshakes in flight from this process
    conn = aiohttp.TCPConnector(limit=0, local_addr=(job["local_ip"], 0))
    opened: list[aiohttp.ClientWebSocketResponse] = []
    readers: list[asyncio.Task[None]] = []
    failed = 0
    async with aiohttp.ClientSession(connector=conn) as http:
        async def one(token: str) -> None:
            nonlocal failed
            async with sem:
                left = deadline - time.monotonic()
                try:
                    ws = await http.ws_connect(job["url"],
                                               headers=ws_headers(job["origin"], token),
                                               timeout=aiohttp.ClientWSTimeout(ws_receive=None),
                                               autoping=True, max_msg_size=0)
                    hello = await first_frame(ws, max(left, 1))
                    if hello.get("type") != "hello":
                        raise ConnectionError(f"first frame {hello!r}")
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, ValueError):
                    failed += 1
                    return
                opened.append(ws)
                readers.append(asyncio.create_task(drain(ws)))
        await asyncio.wait_for(asyncio.gather(*(one(t) for t in job["tokens"])),
                               max(1.0, deadline - time.monotonic()))
        print(f"ready {len(opened)} {failed}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)     # the parent says stop
        still_open = sum(1 for ws in opened if not ws.closed)
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
        for t in readers:
            t.cancel()
        print(f"closed {still_open}", flush=True)
    return 0


async def _read_line(proc: asyncio.subprocess.Process, timeout: float) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        raise ConnectionError(f"client process {proc.pid} exited (code {proc.returncode})")
    return line.decode().strip()


class IdlePages:
    """The parent's handle on the client processes."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def open(self, url: str, origin: str, tokens: list[str], per_process: int,
                   timeout: float) -> tuple[int, int]:
        """Open one page per session token; (opened, failed) once all children report."""
        per = max(1, per_process)
        for k in range(math.ceil(len(tokens) / per)):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE)
            self.procs.append(proc)
            job = {"url": url, "origin": origin, "local_ip": CLIENT_IPS[k % len(CLIENT_IPS)],
                   "tokens": tokens[k * per:(k + 1) * per], "timeout": timeout}
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(job).encode() + b"\n")
            await proc.stdin.drain()
        ok = failed = 0
        for proc in self.procs:
            _, a, b = (await _read_line(proc, timeout + 10)).split()
            ok, failed = ok + int(a), failed + int(b)
        return ok, failed

    async def close(self) -> int:
        """Close every page; how many were still open (none dropped) until then."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
        still = 0
        for proc in self.procs:
            still += int((await _read_line(proc, 60)).split()[1])
            await proc.wait()
        return still

    async def kill(self) -> None:
        """After an error: end the children we started that are still running."""
        for proc in self.procs:
            if proc.returncode is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
                await proc.wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(client_main()))
