"""A private mailtalk presence service for the benchmarks: prepare, start, stop.

It runs the real command, `mailtalk -c FILE presence`, as a child process (so its
RSS and CPU time are its own), with a config, site key and SQLite database in a
temporary directory. Accounts, sessions and mail records are written into that
database before start-up, with the service's own store and password hashing, so
that thousands of them cost seconds (the `mailtalk user add` command would hash a
password per account).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from mailtalk.mailid import MailIds, load_or_create_site_key
from pbench_util import free_port, wait_for

log = logging.getLogger("bench.mailtalk")

MAILTALK = str(Path(sys.executable).with_name("mailtalk"))
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
# The benchmark is one client asking as fast as it can: lift the per-client lookup
# limit (429 after 600 lookups a minute) and the per-writer chat limit (120 messages
# a minute), which guard against abuse, not load.
NO_LIMIT = 1_000_000_000


class MailtalkSite:
    def __init__(self, ip: str, domain: str, extra_presence: str = "",
                 log_level: str = "warning", database_url: str = "", redis_url: str = "",
                 key_file: Path | None = None, extra_config: str = "") -> None:
        """`database_url`: a `postgresql://` URL (default: SQLite in its own state
        directory); `redis_url`: the bus to other processes; `key_file`: a site key
        shared with them (default: its own); `extra_config`: more sections."""
        self.extra_config = extra_config
        self.ip = ip
        self.domain = domain
        self.port = free_port(ip)
        self.dir = Path(tempfile.mkdtemp(prefix="mailtalk-bench-"))
        self.state = self.dir / "state"
        self.config = self.dir / "mailtalk.toml"
        self.extra_presence = extra_presence
        self.log_level = log_level
        self.database_url = database_url
        self.redis_url = redis_url
        self.proc: asyncio.subprocess.Process | None = None
        self.state.mkdir(mode=0o700)
        self.key_file = key_file or self.state / "site.key"
        self.site_key = load_or_create_site_key(self.key_file)
        self.mail_ids = MailIds(self.site_key, 30)

    @property
    def base_url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def database(self) -> Path:
        return self.state / "presence.sqlite3"

    def write_config(self) -> None:
        redis = f'redis = "{self.redis_url}"\n' if self.redis_url else ""
        self.config.write_text(
            f'[site]\nstate_dir = "{self.state}"\nlog_level = "{self.log_level}"\n'
            f'secret_file = "{self.key_file}"\n\n'
            f'[domains]\nnames = ["{self.domain}"]\n\n'
            f'[presence]\nlisten = "{self.ip}:{self.port}"\n'
            f'public_url = "{self.base_url}"\n'
            f'database = "{self.database_url or self.database}"\n{redis}'
            f'lookups_per_minute_per_client = {NO_LIMIT}\n'
            f'chat_messages_per_minute = {NO_LIMIT}\n'
            f'{self.extra_presence}\n{self.extra_config}')

    async def populate(self, accounts: list[str], sessions_per_account: int = 0
                       ) -> dict[str, list[str]]:
        """Create accounts (one shared password hash) and, if asked, web sessions.

        Returns account -> its session tokens (the value of the session cookie).
        """
        if self.database_url:
            return await self._populate_pg(accounts, sessions_per_account)
        from presence_api.auth import hash_password, token_hash
        from presence_api.store_sqlite import SqliteStore
        store = SqliteStore(self.database)
        await store.open()
        tokens: dict[str, list[str]] = {}
        try:
            pw_hash = hash_password(secrets.token_urlsafe(12))
            now = time.time()

            def fill() -> None:
                db = store.db
                db.execute("BEGIN")
                db.executemany("INSERT OR IGNORE INTO accounts (account, password_hash, "
                               "created_at) VALUES (?, ?, ?)",
                               [(a, pw_hash, now) for a in accounts])
                rows = []
                for a in accounts:
                    tokens[a] = [secrets.token_urlsafe(32) for _ in range(sessions_per_account)]
                    rows += [(token_hash(t), a, now + 86400) for t in tokens[a]]
                db.executemany("INSERT INTO sessions VALUES (?, ?, ?)", rows)
                db.execute("COMMIT")
            # One transaction through the store's own connection: the schema is the
            # service's (created by open()), the bulk insert is the benchmark's.
            await store._run(fill)
        finally:
            await store.close()
        return tokens

    async def _populate_pg(self, accounts: list[str], sessions_per_account: int
                           ) -> dict[str, list[str]]:
        """populate() on PostgreSQL: the service's schema (PgStore.open), then COPY."""
        from presence_api.auth import hash_password, token_hash
        from presence_api.store_pg import PgStore
        store = PgStore(self.database_url)
        await store.open()
        tokens = {a: [secrets.token_urlsafe(32) for _ in range(sessions_per_account)]
                  for a in accounts}
        try:
            pw_hash, now = hash_password(secrets.token_urlsafe(12)), time.time()
            async with store.pool.acquire() as db, db.transaction():
                await db.copy_records_to_table(
                    "accounts", columns=["account", "password_hash", "created_at"],
                    records=[(a, pw_hash, now) for a in accounts])
                await db.copy_records_to_table(
                    "sessions", columns=["token_hash", "account", "expires_at"],
                    records=[(token_hash(t), a, now + 86400)
                             for a in accounts for t in tokens[a]])
        finally:
            await store.close()
        return tokens

    async def populate_rooms(self, rooms: list[tuple[str, list[str]]]
                             ) -> list[tuple[str, dict[str, str]]]:
        """Record one sent mail per (sender, recipients) and each recipient's link.

        Returns (mail_id, {recipient: link token}) per room: the milter's record is
        stored; link tokens are self-verifying (presence_api/links.py), nothing to store.
        """
        from presence_api.links import Links
        from presence_api.store import Mail
        from presence_api.store_sqlite import SqliteStore
        store = SqliteStore(self.database)
        await store.open()
        out = []
        try:
            links = Links(store, self.site_key, self.base_url, 30)
            now = time.time()
            for i, (sender, recipients) in enumerate(rooms):
                mail_id = self.mail_ids.issue(sender)
                await store.put_mail(Mail(
                    mail_id=mail_id, account=sender, recorded=True,
                    message_id=f"<bench{i}@{self.domain}>", subject=f"bench room {i}",
                    date="Sun, 29 Nov 2026 08:00:00 +0000", recipients=tuple(recipients),
                    body_text="benchmark", queue_id=f"BENCH{i}", created_at=now))
                tokens = {}
                for r in recipients:
                    token = links.token(mail_id, sender, r)    # self-verifying: no row
                    assert token is not None
                    tokens[r] = token
                out.append((mail_id, tokens))
        finally:
            await store.close()
        return out

    async def lookup_status(self, http: aiohttp.ClientSession, account: str) -> str:
        """The status an (unsigned) lookup of a fresh Mail-ID of `account` answers."""
        body = {"account": account, "mail_id": self.mail_ids.issue(account),
                "recipients": ["bob@b.bench.test"]}
        async with http.post(f"{self.base_url}/api/v1/lookup", json=body) as r:
            return str((await r.json()).get("status"))

    async def start(self, argv: list[str] | None = None) -> None:
        """Start `mailtalk -c CONFIG presence`, or `argv + [CONFIG]` (a variant of it)."""
        self.write_config()
        cmd = argv + [str(self.config)] if argv else [MAILTALK, "-c", str(self.config), "presence"]
        self.proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=open(self.dir / "service.log", "wb"), stderr=asyncio.subprocess.STDOUT)
        async with aiohttp.ClientSession() as http:
            async def ready() -> bool:
                if self.proc is not None and self.proc.returncode is not None:
                    raise RuntimeError(f"mailtalk presence exited early: "
                                       f"{(self.dir / 'service.log').read_text()[-2000:]}")
                async with http.get(f"{self.base_url}/openapi.json",
                                    timeout=aiohttp.ClientTimeout(total=2)) as r:
                    return r.status == 200
            await wait_for(ready, START_TIMEOUT, "mailtalk presence service")
        log.info("mailtalk presence ready at %s (pid %s)", self.base_url, self.pid)

    async def stop(self, keep: bool = False) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("mailtalk presence did not stop in %.0f s: killing pid %d",
                            STOP_TIMEOUT, self.proc.pid)
                self.proc.kill()
                await self.proc.wait()
        self.proc = None
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif os.path.isdir(self.dir):
            log.info("kept %s", self.dir)
