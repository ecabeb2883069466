"""/metrics (Prometheus), /healthz (alive) and /readyz (ready to answer) of the
presence service. /metrics answers only `[metrics] allow` (default: loopback); the
other two anyone, and they say nothing but "ok" or what is not ready.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from presence_api.service import client_ip, in_networks, service

log = logging.getLogger("mailtalk.presence.health")

READY_TIMEOUT = 2.0        # seconds the database has to answer /readyz


def metrics_response(address: str, allow: tuple[Any, ...]) -> web.Response:
    """The process's metrics in Prometheus's text format, or 403."""
    if not in_networks(address, allow):
        return web.Response(status=403, text="metrics: not for this address ([metrics] allow)\n")
    return web.Response(body=generate_latest(REGISTRY),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def get_metrics(request: web.Request) -> web.Response:
    return metrics_response(client_ip(request), service(request).cfg.metrics.allow)


async def get_healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def get_readyz(request: web.Request) -> web.Response:
    """200 when the database answers; 503 naming what does not."""
    svc = service(request)
    try:
        await asyncio.wait_for(svc.store.data_version(), READY_TIMEOUT)
    except Exception as e:          # any failure of the store is "not ready"
        log.warning("not ready: database: %s: %s", type(e).__name__, e)
        return web.json_response({"ready": False, "database": f"{type(e).__name__}: {e}"},
                                 status=503)
    return web.json_response({"ready": True, "database": "ok"})


def routes() -> list[web.AbstractRouteDef]:
    return [web.get("/metrics", get_metrics), web.get("/healthz", get_healthz),
            web.get("/readyz", get_readyz)]
