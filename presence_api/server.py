"""Start and stop the presence service; `make_app` builds it for tests too.

`start(cfg, stop)` is what `mailtalk presence` and `mailtalk run` call (see
mailtalk/cli/runner.py): it opens the store (creating or migrating the schema), listens
on `[presence] listen` and returns a `Running` whose `close()` stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Coroutine
from typing import Any, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from mailtalk import defaults as D
from mailtalk import discovery, metrics
from mailtalk.config import Config, ConfigError
from mailtalk.config_values import redacted
from mailtalk.discovery import Discoverer
from mailtalk.lookup_signing import KeysOf, Verifier
from mailtalk.mailid import MailIds, load_or_create_site_key, outbox_api_token
from presence_api import api, digest, health, openapi, shared, web as pages, ws
from presence_api.bus import RedisBus, channel_for
from presence_api.auth import Auth
from presence_api.auth_external import make_check
from presence_api.chat import ChatHub
from presence_api.connguard import GuardedSite, HttpLimits, default_limits, track_requests
from presence_api.links import Links
from presence_api.lookup_memo import LookupMemo
from presence_api.presence import PresenceHub
from presence_api.ratelimit import RateLimiter
from presence_api.service import SERVICE, Service
from presence_api.store import Store, StoreUnavailable
from presence_api.store_sqlite import SqliteStore, sqlite_path

log = logging.getLogger("mailtalk.presence")

# Requests are small JSON or forms; the largest is a mail record (body text).
CLIENT_MAX_SIZE = 1024 * 1024
SESSION_PURGE_INTERVAL = 3600.0
KEY_LOOKUP_TIMEOUT = 1.0       # seconds to find a signing hook's keys in DNS
_TOKEN_IN_PATH = re.compile(r"(/c/)[^/]+")


def open_store(cfg: Config) -> Store:
    """The store named by `[presence] database` (a path, sqlite:///path, or a
    postgresql:// URL)."""
    db = cfg.presence.database
    if db.startswith(("postgresql://", "postgres://")):
        from presence_api.store_pg import PgStore      # asyncpg only when asked for
        return PgStore(db)
    return SqliteStore(sqlite_path(db))


def published_keys(discoverer: Discoverer) -> KeysOf:
    """A domain's lookup signing keys, from its `_mailtalk` record (cached for its TTL)."""
    async def keys_of(domain: str) -> tuple[str, ...]:
        found = await discoverer.discover(domain, timeout=KEY_LOOKUP_TIMEOUT)
        return found.endpoint.keys if found.endpoint is not None else ()
    return keys_of


def make_app(cfg: Config, store: Store | None = None, clock: Callable[[], float] = time.time,
             site_key: bytes | None = None, discoverer: Discoverer | None = None
             ) -> web.Application:
    """The aiohttp app; the store opens at start-up. `discoverer`: hooks' signing keys."""
    p = cfg.presence
    store = store if store is not None else open_store(cfg)
    key = site_key if site_key is not None else load_or_create_site_key(cfg.site.secret_file)
    presence = PresenceHub(p.idle_away_seconds, clock)
    lookups = LookupMemo(store, D.LOOKUP_CACHE_MAILS, D.LOOKUP_NO_RECORD_SECONDS,
                         D.ACCOUNTS_RELOAD_SECONDS)
    svc = Service(
        cfg=cfg, store=store, clock=clock, lookups=lookups,
        mail_ids=MailIds(key, cfg.site.mail_id_lifetime_days, clock=clock),
        outbox_token=outbox_api_token(key),
        auth=Auth(store, key, p.session_lifetime_hours * 3600, p.login_attempts_per_minute,
                  clock, external=make_check(p.auth, p.imap, p.dovecot_auth),
                  domains=cfg.domains.names, create_account=lookups.create_account),
        links=Links(store, key, p.public_url, p.link_lifetime_days),
        presence=presence,
        chat=ChatHub(store, presence, clock, p.chat_message_max_chars,
                     p.chat_messages_per_minute),
        lookup_limiter=RateLimiter(p.lookups_per_minute_per_client, clock=clock),
        signatures=Verifier(published_keys(discoverer or discovery.for_config(cfg)), clock),
        site_key=key,
    )
    app = web.Application(middlewares=[track_requests, pages.security_headers],
                          client_max_size=CLIENT_MAX_SIZE)
    app[SERVICE] = svc
    app.add_routes(api.routes())
    app.add_routes([web.get("/openapi.json", openapi.get_openapi),
                    web.get("/ws", ws.ws_user), web.get("/ws/c/{token}", ws.ws_link)])
    app.add_routes(pages.routes() + health.routes())
    metrics.PAGES.set_function(svc.pages_open)
    _lifecycle(app, svc)
    return app


def _lifecycle(app: web.Application, svc: Service) -> None:
    """Open the store (and the bus to other processes) at start, the service's own
    rounds while it runs; close pages, rounds, bus and store at the end."""
    bus = None
    if svc.cfg.presence.redis:
        bus = RedisBus(svc.cfg.presence.redis, channel_for(svc.site_key),
                       lambda event: shared.heard(svc, event),
                       lambda again: shared.subscribed(svc, again))
        svc.presence.publish = svc.chat.publish = bus.publish
        svc.presence.others_known = bus.up.is_set
        shared.share_limits(svc, bus.publish)
    sweeper: list[asyncio.Task[None]] = []

    async def on_startup(app: web.Application) -> None:
        await svc.store.open()
        await svc.lookups.open()
        if bus is not None:
            await bus.start()
            sweeper.append(asyncio.create_task(shared.republish(svc)))
        sweeper.extend(asyncio.create_task(c) for c in background(svc))

    async def on_shutdown(app: web.Application) -> None:
        # Open pages would hold the shutdown for shutdown_timeout: close them now.
        pages = [c for conns in svc.presence.clients.values() for c in conns]
        for c in pages + svc.chat.link_clients():
            await c.ws.close(code=1001, message=b"server shutting down")

    async def on_cleanup(app: web.Application) -> None:
        for t in sweeper:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await svc.lookups.close()
        if bus is not None:
            await bus.close()
        await svc.store.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)


def background(svc: Service) -> list[Coroutine[Any, Any, None]]:
    """The service's own rounds: away status, expired sessions, old mails, digests."""
    p = svc.cfg.presence
    # Away is a matter of time passing: look a few times per idle period.
    interval = max(0.5, min(10.0, p.idle_away_seconds / 4))
    rounds = [svc.presence.run_sweeper(interval), purge_sessions(svc.store, svc.clock),
              purge_old_mails(svc, svc.clock)]
    return rounds + [digest.run(svc)] if p.digest else rounds


async def purge_sessions(store: Store, clock: Callable[[], float]) -> None:
    """Expired sessions are refused on use; this keeps the table from growing."""
    while True:
        try:
            n = await store.purge_sessions(clock())
            if n:
                log.info("purged %d expired sessions", n)
        except Exception:
            log.exception("purging expired sessions failed")
        await asyncio.sleep(SESSION_PURGE_INTERVAL)


async def purge_old_mails_once(svc: Service, now: float) -> int:
    """Mail records (with the mail's text) and their chats older than `[presence]
    retention_days` go, RETENTION_PURGE_BATCH records per transaction so that lookups
    are never held long; a chat with a message newer than that stays whole. Returns
    how many went."""
    before = now - svc.cfg.presence.retention_days * 86400
    n = 0
    while ids := await svc.store.purge_mails(before, D.RETENTION_PURGE_BATCH):
        svc.lookups.forget(ids)
        n += len(ids)
        await asyncio.sleep(0)                # lookups run between batches
    if n:
        log.info("purged %d mail records older than %d days, with their chats", n,
                 svc.cfg.presence.retention_days)
    return n


async def purge_old_mails(svc: Service, clock: Callable[[], float]) -> None:
    """At start, then hourly."""
    while True:
        try:
            await purge_old_mails_once(svc, clock())
        except Exception:
            log.exception("purging old mail records failed")
        await asyncio.sleep(D.RETENTION_PURGE_INTERVAL)


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log (shown with -v), without the link tokens: a link is its
    recipient's credential and has no place in a log file."""

    @property
    def enabled(self) -> bool:
        # aiohttp calls log() for every request when this is True (the base class's
        # default), even with the access log off: each lookup then paid for the regex.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        path = _TOKEN_IN_PATH.sub(r"\1…", request.path)
        self.logger.info("%s %s %s %d %.1f ms", request.remote, request.method, path,
                         response.status, time * 1000)


class Running:
    def __init__(self, runner: web.AppRunner, site: GuardedSite) -> None:
        self._runner, self.site = runner, site

    @property
    def port(self) -> int:
        return self.site.port

    async def close(self) -> None:
        await self._runner.cleanup()
        log.info("presence service stopped")


async def serve_app(app: web.Application, host: str, port: int, limits: HttpLimits
                    ) -> Running:
    """Serve `app` on host:port with the connection limits and timeouts of `limits`
    (presence_api/connguard.py). OSError if it cannot listen."""
    handler_args: dict[str, Any] = {
        "access_log": logging.getLogger("aiohttp.access"), "access_log_class": AccessLogger,
        # aiohttp's own idle timer, as a backstop to GuardedHandler's.
        "keepalive_timeout": limits.idle_timeout}
    runner = web.AppRunner(app, shutdown_timeout=5.0, **handler_args)
    await runner.setup()
    site = GuardedSite(runner, host, port, limits, handler_args)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return Running(runner, site)


async def start(cfg: Config, stop: asyncio.Event, *, limits: HttpLimits | None = None
                ) -> Running:
    """Serve on [presence] listen until close(). `stop` is not set by us: aiohttp's
    server does not die on its own short of the process. `limits`: for tests."""
    if limits is None:
        limits = default_limits(getattr(cfg.presence, "trusted_proxies", ()))
    listen = cfg.presence.listen
    app = make_app(cfg)
    try:
        running = await serve_app(app, listen.host, listen.port, limits)
    except StoreUnavailable as e:
        raise ConfigError(f"{cfg.source}: [presence] database: {e}") from None
    except OSError as e:
        raise ConfigError(f"{cfg.source}: [presence] listen: cannot listen on {listen}: "
                          f"{e.strerror}") from None
    log.info("presence service on %s (public URL %s, database %s)", listen,
             cfg.presence.public_url, redacted(cfg.presence.database))
    return running
