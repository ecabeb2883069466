#!/usr/bin/env python3
"""A minimal aiohttp app answering POST /api/v1/lookup with a fixed JSON: the floor.

Used by presence_bench.py as a reference line: what any one-process aiohttp service
costs on this machine with this client (parse the JSON body, answer JSON), before
any work of mailtalk's own. Usage: floor_server.py HOST PORT
"""

from __future__ import annotations

import sys

from aiohttp import web

ANSWER = {"status": "offline", "checked": "2026-11-29T08:00:00Z",
          "links": {"bob@b.bench.test": "http://127.0.15.5/c/x"}}


async def lookup(request: web.Request) -> web.Response:
    await request.json()
    return web.json_response(ANSWER)


if __name__ == "__main__":
    app = web.Application()
    app.add_routes([web.post("/api/v1/lookup", lookup)])
    web.run_app(app, host=sys.argv[1], port=int(sys.argv[2]), access_log=None, print=None)
