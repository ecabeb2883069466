"""The presence service in-process: a config, a settable clock, and a running app
(aiohttp's test server, real SQLite) on a loopback address of the 127.0.12.x range."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, CookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from mailtalk.config import Config, parse_text
from mailtalk.mailid import MailIds, outbox_api_token
from presence_api.server import make_app
from presence_api.service import SERVICE, Service
from presence_api.store_sqlite import SqliteStore

_LIGHT = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
HOST = "127.0.12.1"
DOMAIN = "a.test"
PASSWORD = "correct horse battery"


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
    extra = "".join(f"{k} = {v!r}\n" if not isinstance(v, str) else f'{k} = "{v}"\n'
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

    async def lookup(self, account: str, mail_id: str, recipients: list[str]) -> dict[str, Any]:
        r = await self.client.post("/api/v1/lookup", json={
            "account": account, "mail_id": mail_id, "recipients": recipients})
        assert r.status == 200, await r.text()
        return await r.json()

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
    app: web.Application = make_app(cfg, clock=clock, site_key=key)
    client = TestClient(TestServer(app, host=host, port=port))
    await client.start_server()
    return Presence(client, clock, key)


def browser(p: Presence) -> ClientSession:
    """Another browser (its own cookie jar) against the same server; close it after use."""
    return ClientSession(base_url=str(p.client.make_url("/")), cookie_jar=CookieJar(unsafe=True))


__all__ = ["Clock", "Presence", "PASSWORD", "DOMAIN", "HOST", "make_config", "start_presence",
           "csrf_of", "browser", "SqliteStore"]
