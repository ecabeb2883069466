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
from presence_api.shared import peers_alive

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
    """200 when the database answers and, with `[presence] redis`, this process is
    subscribed to the other processes' events; else 503 naming what is not ready.
    `processes`: the other processes heard from lately (information, not a condition:
    one process of several is a working site)."""
    svc = service(request)
    answer: dict[str, Any] = {"ready": True, "database": "ok"}
    try:
        await asyncio.wait_for(svc.store.data_version(), READY_TIMEOUT)
    except Exception as e:          # any failure of the store is "not ready"
        log.warning("not ready: database: %s: %s", type(e).__name__, e)
        answer.update(ready=False, database=f"{type(e).__name__}: {e}")
    if svc.cfg.presence.redis:
        if svc.presence.others_known():
            answer["redis"] = "ok"
        else:
            log.warning("not ready: Redis: not subscribed (lookups say unknown for "
                        "senders with no page here)")
            answer.update(ready=False, redis="not subscribed")
        answer["processes"] = 1 + peers_alive(svc)
    return web.json_response(answer, status=200 if answer["ready"] else 503)


def routes() -> list[web.AbstractRouteDef]:
    return [web.get("/metrics", get_metrics), web.get("/healthz", get_healthz),
            web.get("/readyz", get_readyz)]
