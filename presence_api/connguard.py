"""The presence service's connections under a slow-connection flood.

aiohttp's server has no time limit for a request's head: its `keepalive_timeout` runs
from the connection's start too, but one value cannot be both a short head timeout and
a keep-alive long enough for browsers and proxies, and nothing bounds a slow body. So
each connection is served by `GuardedHandler` (aiohttp's RequestHandler plus one timer):

- accepted at all only if `ConnLimiter` admits its peer (per client address and in
  all); otherwise aborted at once, before anything is read;
- `head`: from the connection's start, and from the first byte of each later request,
  the request's head must arrive within `head_timeout`;
- `request`: from its head to its response, a request has `request_timeout` (a slow
  body, or a client that does not read the answer);
- `idle`: after a response, a keep-alive connection waits `idle_timeout` for the next
  request (also a backstop for a pipelined partial head, which arrives mid-request);
- a WebSocket is exempt from all three once it is open (`set_parser`: aiohttp calls
  it when the upgrade is done, and ws.py upgrades only authenticated pages); its
  heartbeat (`[presence] heartbeat_seconds`) drops vanished pages instead.

A timer that runs out closes the connection (`force_close`). The `track_requests`
middleware tells the handler when a request's handling starts and ends, and turns the
ConnectionResetError of a request body cut off that way into a quiet 408 (nothing is
sent: the connection is gone) instead of aiohttp's "Error handling request" traceback.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from mailtalk import defaults as D
from mailtalk.connlimit import LOOPBACK, ConnLimiter, Network, networks, total_within_fd_limit

log = logging.getLogger("mailtalk.presence")

FD_SHARE = 2      # the presence service takes at most half the open-file limit


@dataclass(frozen=True)
class HttpLimits:
    per_address: int = D.PRESENCE_MAX_CONNECTIONS_PER_CLIENT
    total: int = D.PRESENCE_MAX_CONNECTIONS
    head_timeout: float = D.PRESENCE_HEADER_TIMEOUT
    request_timeout: float = D.PRESENCE_REQUEST_TIMEOUT
    idle_timeout: float = D.PRESENCE_KEEPALIVE_TIMEOUT
    exempt: tuple[Network, ...] = LOOPBACK

    def limiter(self) -> ConnLimiter:
        return ConnLimiter(self.per_address, total_within_fd_limit(self.total, FD_SHARE),
                           self.exempt, name="presence service", logger=log)


def default_limits(trusted_proxies: Any = ()) -> HttpLimits:
    """The defaults; loopback and the trusted proxies are counted in the total only."""
    return HttpLimits(exempt=LOOPBACK + networks(trusted_proxies or ()))


class GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol with the admission check and the timers."""

    def __init__(self, manager: web.Server, *, limits: HttpLimits, limiter: ConnLimiter,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits, self._limiter = limits, limiter
        self._ticket: str | None = None
        self._phase = "head"          # head | request | idle | websocket
        self._due = 0.0               # when the phase's time is up (loop time)
        self._timer: asyncio.TimerHandle | None = None
        self._peer: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._peer = transport.get_extra_info("peername")
        self._ticket = self._limiter.admit(self._peer)
        if self._ticket is None:
            transport.abort()         # refused: nothing read, nothing of aiohttp set up
            return
        super().connection_made(transport)
        self._enter("head", self._limits.head_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._ticket is None:
            return
        self._limiter.release(self._ticket)
        self._ticket = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._phase == "idle" and data:
            # The first byte of the next request: its head has head_timeout from now.
            self._enter("head", self._limits.head_timeout)

    def set_parser(self, parser: Any, data_received_cb: Callable[[], None] | None = None
                   ) -> None:
        super().set_parser(parser, data_received_cb)
        self._phase = "websocket"     # the upgrade is done: no time limit from now on

    def request_started(self) -> None:
        self._enter("request", self._limits.request_timeout)

    def request_finished(self) -> None:
        if self._phase != "websocket" and self._ticket is not None:
            self._enter("idle", self._limits.idle_timeout)

    def _enter(self, phase: str, seconds: float) -> None:
        # One timer per connection, moved only when a phase ends sooner than it is set
        # for; otherwise it re-arms itself when it fires (two requests: no heap work).
        self._phase = phase
        self._due = due = self._loop.time() + seconds
        if self._timer is None or due < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(due, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self._phase == "websocket" or self._ticket is None:
            return
        if self._loop.time() < self._due:
            self._timer = self._loop.call_at(self._due, self._expired)
            return
        log.debug("closing the connection from %s: %s timeout", self._peer, self._phase)
        self.force_close()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def track_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells a GuardedHandler that a request's head has arrived and when it is handled."""
    proto = request.protocol
    if not isinstance(proto, GuardedHandler):
        return await handler(request)
    proto.request_started()
    try:
        return await handler(request)
    except ConnectionResetError:
        if request.transport is not None and not request.transport.is_closing():
            raise
        # The client went away, or a time limit closed it, while its request was read:
        # no one to answer, and no error of ours (aiohttp would log a traceback).
        log.debug("%s %s: the connection closed before the request was read",
                  request.method, request.path)
        return web.Response(status=408)
    finally:
        proto.request_finished()


class GuardedSite(web.BaseSite):
    """aiohttp's TCPSite, but every connection gets a GuardedHandler (the runner's
    `Server` stays the manager: aiohttp's shutdown sees these connections)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limits: HttpLimits,
                 handler_args: dict[str, Any]) -> None:
        super().__init__(runner)
        self._host, self._port = host, port
        self.limits, self.limiter = limits, limits.limiter()
        self._handler_args = handler_args

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])   # type: ignore[union-attr]

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def factory() -> GuardedHandler:
            return GuardedHandler(server, loop=loop, limits=self.limits, limiter=self.limiter,
                                  **self._handler_args)

        self._server = await loop.create_server(factory, self._host, self._port,
                                                backlog=self._backlog, reuse_address=True)
