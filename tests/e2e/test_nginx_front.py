"""deploy/nginx/mailtalk.conf in front of a real `mailtalk presence` process: a private
Debian nginx (`nginx -p DIR -c conf`, loopback, a certificate made for the test) with
the server block as shipped (only addresses, names and paths changed). Pages and the
chat's WebSocket go through it over TLS, and with `[presence] trusted_proxies` the
service's per-client limits count the real clients, not nginx.
"""

from __future__ import annotations

import datetime
import re
import ssl
import subprocess
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.mailtalk import MailtalkService
from support.requires import require_root, require_tool
from support.wait import free_port, port_open, wait_for

NGINX_BIN = "/usr/sbin/nginx"
FRONT, BACK = "127.0.26.1", "127.0.26.2"
CLIENT_1, CLIENT_2 = "127.0.26.9", "127.0.26.10"
CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "mailtalk.conf"
ALICE, PASSWORD = "alice@a.test", "a long password 1"


def certificate(d: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, FRONT)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    crt, pem = d / "front.crt", d / "front.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


def server_block(port: int, backends: list[str], crt: Path, pem: Path) -> str:
    """The shipped block with this test's addresses, name and certificate (and a
    `server` line per backend, as the file says to add them)."""
    text = CONF.read_text()
    text = re.sub(r"listen 443 ssl http2;", f"listen {FRONT}:{port} ssl http2;", text)
    text = re.sub(r"\n\s*listen \[::\]:443 ssl http2;", "", text)
    text = text.replace("server 127.0.0.1:8470;",
                        "\n    ".join(f"server {b};"
                                      for b in backends))
    text = text.replace("/etc/letsencrypt/live/chat.a.example/fullchain.pem", str(crt))
    text = text.replace("/etc/letsencrypt/live/chat.a.example/privkey.pem", str(pem))
    assert str(crt) in text and f"server {backends[0]}" in text and f":{port} ssl" in text
    return text


class Nginx:
    def __init__(self, d: Path, block: str, port: int) -> None:
        self.dir, self.port = d, port
        for sub in ("logs", "tmp"):
            (d / sub).mkdir(mode=0o777, exist_ok=True)
            (d / sub).chmod(0o777)
        (d / "nginx.conf").write_text(f"""
daemon off;
pid {d}/nginx.pid;
error_log {d}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    access_log off;
{block}
}}
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Nginx":
        self.proc = subprocess.Popen([NGINX_BIN, "-p", str(self.dir), "-c",
                                      str(self.dir / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: self.proc is not None and self.proc.poll() is None
                 and port_open(FRONT, self.port), timeout=15, what="nginx")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_root()
    require_tool(NGINX_BIN, "nginx")
    d = tmp_path_factory.mktemp("nginx")
    port, back_port = free_port(FRONT), free_port(BACK)
    url = f"https://{FRONT}:{port}"
    crt, pem = certificate(d)
    svc = MailtalkService(d, {
        "domains": {"names": ["a.test"]},
        "presence": {"listen": f"{BACK}:{back_port}", "public_url": url,
                     "trusted_proxies": ["127.0.0.1"], "lookups_per_minute_per_client": 3}},
        subcommand="presence")
    nginx = Nginx(d, server_block(port, [f"{BACK}:{back_port}"], crt, pem), port)
    with svc:
        r = svc.command("user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        nginx.start()
        try:
            yield url
        finally:
            nginx.stop()


def client(source: str | None = None) -> aiohttp.ClientSession:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE      # the test's own cert
    conn = aiohttp.TCPConnector(ssl=ctx, local_addr=(source, 0) if source else None)
    return aiohttp.ClientSession(connector=conn, cookie_jar=aiohttp.CookieJar(unsafe=True))


async def test_pages_and_the_chat_socket_go_through_nginx(front: str) -> None:
    async with client() as c:
        async with c.get(front + "/healthz") as r:
            assert r.status == 200 and await r.text() == "ok\n"
        async with c.get(front + "/login") as r:
            page = await r.text()
            assert r.status == 200 and 'name="csrf"' in page
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        async with c.post(front + "/login", data={"csrf": csrf, "account": ALICE,
                                                  "password": PASSWORD},
                          allow_redirects=False) as r:
            assert r.status == 303, await r.text()
        ws = await c.ws_connect(front.replace("https:", "wss:") + "/ws",
                                headers={"Origin": front})
        hello = await ws.receive_json(timeout=10)
        assert hello["type"] == "hello"
        await ws.send_json({"type": "status", "mode": "busy"})      # both ways, upgraded
        while not ((frame := await ws.receive_json(timeout=10))["type"] == "presence"
                   and frame.get("status") == "busy"):
            pass                          # until the service's answer (a deadline each)
        await ws.close()


async def test_limits_count_each_real_client_not_nginx(front: str) -> None:
    """Three refused lookups a minute per client (the fixture's limit): the fourth from
    one client is 429, while another client behind the same nginx is still heard."""
    async def lookups(source: str, n: int) -> list[int]:
        async with client(source) as c:
            out = []
            for _ in range(n):
                async with c.post(front + "/api/v1/lookup", json={"bad": 1}) as r:
                    out.append(r.status)
            return out
    assert await lookups(CLIENT_1, 4) == [400, 400, 400, 429]
    assert await lookups(CLIENT_2, 1) == [400]


@pytest.fixture
def two_behind(tmp_path: Path) -> Iterator[tuple[str, list[MailtalkService]]]:
    """Two presence processes on a private PostgreSQL and Redis, behind the nginx."""
    from support.postgres import Postgres, unavailable as pg_unavailable
    from support.redis import Redis, unavailable as redis_unavailable
    require_root()
    require_tool(NGINX_BIN, "nginx")
    for why in (pg_unavailable(), redis_unavailable()):
        if why:
            pytest.skip(why)
    pg, redis = Postgres().start(), Redis().start()
    port = free_port(FRONT)
    url = f"https://{FRONT}:{port}"
    crt, pem = certificate(tmp_path)
    backends = [f"{BACK}:{free_port(BACK)}", f"{BACK}:{free_port(BACK)}"]
    procs = [MailtalkService(tmp_path, {
        "site": {"secret_file": str(tmp_path / "site.key"), "state_dir": str(tmp_path / f"s{i}")},
        "domains": {"names": ["a.test"]},
        "presence": {"listen": b, "public_url": url, "trusted_proxies": ["127.0.0.1"],
                     "database": pg.url, "redis": redis.url, "heartbeat_seconds": 1}},
        subcommand="presence", name=f"p{i}") for i, b in enumerate(backends)]
    nginx = Nginx(tmp_path, server_block(port, backends, crt, pem), port)
    try:
        procs[0].start()
        procs[1].start()
        r = procs[0].command("user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        nginx.start()
        yield url, procs
    finally:
        nginx.stop()
        for p in procs:
            p.kill()
        redis.remove()
        pg.remove()


async def test_a_page_survives_its_process_dying_behind_nginx(
        two_behind: tuple[str, list[MailtalkService]], browser: Any, tmp_path: Path) -> None:
    """alice's page (Chromium, through nginx) is on one process or the other; that
    process is killed: the page reconnects through nginx to the other within seconds,
    its session holds (PostgreSQL), and it shows the message sent meanwhile."""
    from playwright.async_api import expect
    from mailtalk.mailid import MailIds, outbox_api_token
    url, procs = two_behind
    key = (tmp_path / "site.key").read_bytes()
    mail_id = MailIds(key, 30).issue(ALICE)
    async with client() as c:
        async with c.post(url + "/api/v1/mails", json={
                "mail_id": mail_id, "account": ALICE, "message_id": "<n@a.test>",
                "subject": "Behind nginx", "recipients": ["bob@b.test"]},
                headers={"Authorization": f"Bearer {outbox_api_token(key)}"}) as r:
            assert r.status == 201, await r.text()
    ctx = await browser.new_context(ignore_https_errors=True)
    page = await ctx.new_page()
    await page.goto(url + "/login")
    await page.fill("input[name=account]", ALICE)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.goto(f"{url}/m/{mail_id}")
    await expect(page.locator("body")).to_have_attribute("data-connected", "yes", timeout=20_000)
    await page.fill("#text", "before")
    await page.press("#text", "Enter")
    await expect(page.locator("#messages .text")).to_have_text(["before"], timeout=20_000)

    # The process that took the page's message holds its WebSocket: that one dies.
    (holder,) = [p for p in procs if re.search(r"message \d+ from " + re.escape(ALICE),
                                                p.log())]
    holder.kill()
    await expect(page.locator("body")).to_have_attribute("data-connected", "yes", timeout=20_000)
    await page.fill("#text", "after")
    await page.press("#text", "Enter")
    await expect(page.locator("#messages .text")).to_have_text(["before", "after"],
                                                               timeout=20_000)
    await ctx.close()
