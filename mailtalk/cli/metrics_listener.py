"""`[metrics] listen`: one small HTTP listener per process, for the parts that have no
HTTP server of their own (the milter, the receiving hook): /metrics for Prometheus
(only `[metrics] allow`) and /healthz ("ok" while the process runs its event loop).
"""

from __future__ import annotations

import logging

from aiohttp import web

from mailtalk.config import Config, ConfigError
from presence_api.health import metrics_response

log = logging.getLogger("mailtalk.metrics")


class Running:
    def __init__(self, runner: web.AppRunner) -> None:
        self._runner = runner

    async def close(self) -> None:
        await self._runner.cleanup()


async def start(cfg: Config) -> Running:
    listen = cfg.metrics.listen
    assert listen is not None

    async def get_metrics(request: web.Request) -> web.Response:
        return metrics_response(request.remote or "", cfg.metrics.allow)

    async def get_healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.add_routes([web.get("/metrics", get_metrics), web.get("/healthz", get_healthz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, listen.host, listen.port).start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(f"{cfg.source}: [metrics] listen: cannot listen on {listen}: "
                          f"{e.strerror}") from None
    log.info("metrics on http://%s/metrics", listen)
    return Running(runner)
