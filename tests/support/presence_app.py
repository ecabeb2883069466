"""The presence service in-process: a config, a settable clock, and a running app
(aiohttp's test server, real SQLite) on a loopback address of the 127.0.12.x range.

Lookups are signed as a receiving hook signs them (`mailtalk.lookup_signing`) with
HOOK_KEY, which every domain publishes here (an injected resolver, no DNS server)."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, CookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mailtalk.config import Config, parse_text
from mailtalk.discovery import Discoverer
from mailtalk.lookup_signing import public_key_text, sign
from mailtalk.mailid import MailIds, outbox_api_token
from support.static_dns import StaticResolver
from presence_api.server import make_app
from presence_api.service import SERVICE, Service
from presence_api.store_sqlite import SqliteStore

_LIGHT = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
HOST = "127.0.12.1"
DOMAIN = "a.test"
PASSWORD = "correct horse battery"
# The receiving hooks' key in these tests: every domain publishes it.
HOOK_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


class PublishingResolver:
    """Answers `_mailtalk.<domain>` for every domain with a record that has HOOK_KEY."""

    def __init__(self, key: Ed25519PrivateKey = HOOK_KEY) -> None:
        self.k = public_key_text(key)
        self.queries: list[str] = []

    async def resolve(self, qname: Any, rdtype: Any = "TXT", *args: Any, **kw: Any) -> Any:
        name = str(qname).rstrip(".").lower()
        self.queries.append(name)
        domain = name.partition(".")[2]
        record = f"v=mailtalk1; api=https://chat.{domain}; k={self.k}"
        return await StaticResolver({name: [record]}).resolve(qname)


def hook_keys(cfg: Config) -> Discoverer:
    """What the app uses to find hooks' signing keys: HOOK_KEY for every domain."""
    return Discoverer(cfg.dns, resolver=PublishingResolver())


def signed(body: bytes, domain: str, path: str, now: float,
           key: Ed25519PrivateKey = HOOK_KEY) -> dict[str, str]:
    """The headers of a lookup signed by `domain`'s hook."""
    return {"Content-Type": "application/json",
            **sign(key, domain, "POST", path, body, int(now))}


class Clock:
    """Wall time that a test moves forward by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(tmp: Path, public_url: str = f"http://{HOST}:8470", **presence: Any) -> Config:
    presence.setdefault("database", f"{tmp}/presence.sqlite3")
    extra = "".join(f'{k} = "{v}"\n' if isinstance(v, str) else
                    f"{k} = {str(v).lower()}\n" if isinstance(v, bool) else f"{k} = {v!r}\n"
                    for k, v in presence.items())
    text = (f'[site]\nstate_dir = "{tmp}"\n'
            f'[domains]\nnames = ["{DOMAIN}"]\n'
            f'[presence]\nlisten = "{HOST}:8470"\npublic_url = "{public_url}"\n' + extra)
    return parse_text(text, str(tmp / "test.toml"))


class Presence:
    """One in-process presence app with its test client, keys and clock."""

    def __init__(self, client: TestClient, clock: Clock, key: bytes) -> None:
        self.client = client
        self.clock = clock
        self.key = key
        self.svc: Service = client.server.app[SERVICE]
        self.mail_ids = MailIds(key, self.svc.cfg.site.mail_id_lifetime_days, clock=clock)

    @property
    def origin(self) -> str:
        return self.svc.origin

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {outbox_api_token(self.key)}"}

    async def add_user(self, account: str, password: str = PASSWORD) -> None:
        # Light argon2 parameters keep the suite fast; the parameters travel in the hash,
        # so log-in verifies it with the real code. (`mailtalk user` tests use the real ones.)
        await self.svc.lookups.create_account(account, _LIGHT.hash(password), self.clock())

    async def record(self, account: str, recipients: list[str], subject: str = "Hello",
                     body: str = "The text of the mail.", mail_id: str | None = None) -> str:
        mail_id = mail_id or self.mail_ids.issue(account)
        r = await self.client.post("/api/v1/mails", headers=self.bearer(), json={
            "mail_id": mail_id, "account": account, "message_id": "<m1@a.test>",
            "subject": subject, "date": "Sun, 29 Nov 2026 07:00:00 +0000",
            "recipients": recipients, "body_text": body, "queue_id": "4ABCDEF"})
        assert r.status == 201, await r.text()
        return mail_id

    async def lookup(self, account: str, mail_id: str, recipients: list[str],
                     message_id: str | None = "<m1@a.test>") -> dict[str, Any]:
        """As a receiving hook asks: one request per recipient domain, each signed by
        that domain's hook; the answers merged (the first one's status and time).
        `message_id`: the mail's (default: the one `record` stores); None: left out."""
        by_domain: dict[str, list[str]] = {}
        for r in recipients:
            by_domain.setdefault(r.rpartition("@")[2].lower(), []).append(r)
        answers = []
        for domain, rcpts in by_domain.items() or [("", [])]:
            body = {"account": account, "mail_id": mail_id, "recipients": rcpts}
            if message_id is not None:
                body["message_id"] = message_id
            data = json.dumps(body).encode()
            headers = (signed(data, domain, self.svc.lookup_path, self.clock()) if domain
                       else {"Content-Type": "application/json"})
            r = await self.client.post("/api/v1/lookup", data=data, headers=headers)
            assert r.status == 200, await r.text()
            answers.append(await r.json())
        links = {k: v for a in answers for k, v in a["links"].items()}
        return {**answers[0], "links": links}

    async def login(self, account: str, password: str = PASSWORD,
                    client: TestClient | ClientSession | None = None) -> None:
        """Log `client` (default: self.client) in through the real form."""
        c = client or self.client
        r = await c.get("/login")
        csrf = csrf_of(await r.text())
        r = await c.post("/login", data={"csrf": csrf, "account": account,
                                         "password": password}, allow_redirects=False)
        assert r.status == 303, await r.text()

    def link_path(self, url: str) -> str:
        return url[len(self.svc.cfg.presence.public_url):]


def csrf_of(html: str) -> str:
    marker = 'name="csrf" value="'
    i = html.index(marker) + len(marker)
    return html[i:html.index('"', i)]


async def start_presence(tmp: Path, clock: Clock | None = None, public_url: str | None = None,
                         host: str = HOST, **presence: Any) -> Presence:
    """A running app on `host` with a free port; public_url defaults to that address."""
    clock = clock or Clock()
    key = secrets.token_bytes(32)
    from support.wait import free_port
    port = free_port(host)
    cfg = make_config(tmp, public_url or f"http://{host}:{port}", **presence)
    app: web.Application = make_app(cfg, clock=clock, site_key=key, discoverer=hook_keys(cfg))
    client = TestClient(TestServer(app, host=host, port=port))
    await client.start_server()
    return Presence(client, clock, key)


def browser(p: Presence) -> ClientSession:
    """Another browser (its own cookie jar) against the same server; close it after use."""
    return ClientSession(base_url=str(p.client.make_url("/")), cookie_jar=CookieJar(unsafe=True))


__all__ = ["Clock", "Presence", "PASSWORD", "DOMAIN", "HOST", "HOOK_KEY", "make_config",
           "start_presence", "csrf_of", "browser", "hook_keys", "signed", "SqliteStore"]
