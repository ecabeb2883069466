"""The shared state of one presence-service app, handed to every handler."""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable
from urllib.parse import urlsplit

from aiohttp import web

from mailtalk.config import Config
from mailtalk.constants import API_LOOKUP
from mailtalk.lookup_signing import Verifier
from mailtalk.mailid import MailIds
from presence_api.auth import Auth
from presence_api.chat import ChatHub
from presence_api.links import Links
from presence_api.lookup_memo import LookupMemo
from presence_api.presence import PresenceHub
from presence_api.ratelimit import RateLimiter
from presence_api.store import Store


@dataclass
class Service:
    cfg: Config
    store: Store
    lookups: LookupMemo
    clock: Callable[[], float]
    mail_ids: MailIds
    outbox_token: str
    auth: Auth
    links: Links
    presence: PresenceHub
    chat: ChatHub
    lookup_limiter: RateLimiter    # refused lookups per client address (api.py)
    signatures: Verifier           # signed lookups: who may have links
    # Answers given short of what was asked, by reason ("rate_limited"): logged and
    # counted, never silent.
    degraded: Counter[str] = field(default_factory=Counter)
    site_key: bytes = b""          # digests' X-Mailtalk-Digest (digest_mail.py)
    peers: dict[str, float] = field(default_factory=dict)  # other processes: heard until

    def limiters(self) -> dict[str, RateLimiter]:
        """Every rate limit of the service, by the name the processes share it under."""
        return {"lookup": self.lookup_limiter, "chat": self.chat.flood,
                "login_pair": self.auth.fail_pair, "login_account": self.auth.fail_account}

    def pages_open(self) -> int:
        """Chat pages connected: logged-in pages and link pages."""
        return (sum(len(c) for c in self.presence.clients.values())
                + len(self.chat.link_clients()))

    @cached_property
    def lookup_path(self) -> str:
        """The lookup's path as the hooks sign it: public_url's path + the API path
        (a proxy in front may serve us under a prefix it strips)."""
        return urlsplit(self.cfg.presence.public_url).path.rstrip("/") + API_LOOKUP

    @cached_property
    def origin(self) -> str:
        """scheme://host[:port] of public_url: the only Origin a WebSocket may come from.
        (Cached: the security-headers middleware asks on every response.)"""
        return origin_of(self.cfg.presence.public_url)

    @property
    def secure(self) -> bool:
        return self.cfg.presence.public_url.startswith("https://")


def origin_of(url: str) -> str:
    """An URL's origin as browsers send it: lowercased, default port left out."""
    u = urlsplit(url)
    host = (u.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = u.port
    if port is None or (u.scheme, port) in (("http", 80), ("https", 443)):
        return f"{u.scheme.lower()}://{host}"
    return f"{u.scheme.lower()}://{host}:{port}"


SERVICE: web.AppKey[Service] = web.AppKey("mailtalk_presence", Service)


def service(request: web.Request) -> Service:
    return request.app[SERVICE]


def client_ip(request: web.Request) -> str:
    """The client's address: the peer, or behind a `[presence] trusted_proxies` proxy
    the last X-Forwarded-For address that is not itself a trusted proxy."""
    peer = request.remote or "?"
    proxies = request.app[SERVICE].cfg.presence.trusted_proxies
    if not proxies or not in_networks(peer, proxies):
        return peer
    for hop in reversed(request.headers.get("X-Forwarded-For", "").split(",")):
        hop = hop.strip()
        if not hop:
            continue
        if not in_networks(hop, proxies):
            return hop if _is_address(hop) else peer
    return peer


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def in_networks(text: str, networks: tuple[Any, ...]) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return any(address in n for n in networks)
