"""A stand-in for a foreign site's presence service: a real aiohttp server on loopback
whose answers the test controls, so that the lookup client can be tested against
slow, oversize and hostile answers a real service would never give."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

from support.wait import free_port

Handler = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


@dataclass
class FakeRemote:
    """Stand-in for a foreign site's presence service: records every lookup request
    and answers with `handler` (default: online, one link per recipient)."""
    host: str
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    handler: Handler | None = None
    runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def link(self, rcpt: str) -> str:
        return f"{self.base}/c/tok-{rcpt.replace('@', '.')}"

    async def _lookup(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.handler is not None:
                return await self.handler(request, body)
            return web.json_response(self.answer(body))
        finally:
            self.in_flight -= 1

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"status": "online", "checked": "2026-11-29T07:00:00Z",
                "links": {r: self.link(r) for r in body["recipients"]}}

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response({"openapi": "3.1.0", "paths": {}})

    async def _readyz(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": True, "database": "ok"})

    async def start(self) -> "FakeRemote":
        app = web.Application()
        app.router.add_post("/api/v1/lookup", self._lookup)
        app.router.add_get("/openapi.json", self._openapi)
        app.router.add_get("/readyz", self._readyz)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        self.port = self.port or free_port(self.host)
        await web.TCPSite(self.runner, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()
