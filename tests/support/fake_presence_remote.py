"""Helpers of the discovery engineer's tests: a real dnsmasq with TXT records, a
stand-in remote presence service, and a small config builder.

The remote presence service here is a stand-in for a foreign site's (a real aiohttp
server on loopback whose answers the test controls), so that the lookup client can be
tested against slow, oversize and hostile answers a real service would never give.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import dns.asyncresolver
import dns.nameserver
from aiohttp import web

from mailtalk.config import Config, parse_text
from support.dns import Dnsmasq as _BaseDnsmasq, _txt_strings
from support.requires import require_dnsmasq
from support.wait import free_port

DNS_HOST = "127.0.14.53"


class Dnsmasq(_BaseDnsmasq):
    """infra's dnsmasq (support/dns.py), with several TXT records per name and a TTL.

    `records` maps a name to a list of TXT values; each value is one string or a
    list of strings (one TXT record made of several character-strings).
    """

    def __init__(self, records: dict[str, list[str | list[str]]], host: str = DNS_HOST,
                 ttl: int = 60) -> None:
        require_dnsmasq()          # skips (not root, no dnsmasq) with the reason
        super().__init__(host)
        self.records = records
        self.ttl = ttl
        self.start()

    @property
    def host(self) -> str:
        return self.address

    def argv(self) -> list[str]:
        args = super().argv() + [f"--local-ttl={self.ttl}"]
        for name, values in self.records.items():
            args += [f"--txt-record={name},{_txt_strings(v)}" for v in values]
        return args


class CountingResolver:
    """A real dnspython resolver that counts the queries it sends (cache tests)."""

    def __init__(self, nameserver_host: str, port: int) -> None:
        self.inner = dns.asyncresolver.Resolver(configure=False)
        self.inner.nameservers = [dns.nameserver.Do53Nameserver(nameserver_host, port)]
        self.inner.cache = None
        self.queries: list[str] = []

    async def resolve(self, qname: Any, rdtype: Any = "A", *args: Any, **kw: Any) -> Any:
        self.queries.append(str(qname))
        return await self.inner.resolve(qname, rdtype, *args, **kw)


def make_config(nameserver: str, *, lookup_timeout: float = 2.0, concurrency: int = 8,
                negative_ttl: int = 300, max_ttl: int = 3600, extra: str = "") -> Config:
    return parse_text(f"""
[filter]
lookup_timeout = {lookup_timeout}
lookup_concurrency_per_domain = {concurrency}
[dns]
nameservers = ["{nameserver}"]
negative_ttl = {negative_ttl}
max_ttl = {max_ttl}
{extra}
""", "test config")


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

    async def start(self) -> "FakeRemote":
        app = web.Application()
        app.router.add_post("/api/v1/lookup", self._lookup)
        app.router.add_get("/openapi.json", self._openapi)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        self.port = self.port or free_port(self.host)
        await web.TCPSite(self.runner, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()
