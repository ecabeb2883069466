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
from typing import Iterator

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


def server_block(port: int, backend: str, crt: Path, pem: Path) -> str:
    """The shipped block with this test's addresses, name and certificate."""
    text = CONF.read_text()
    text = re.sub(r"listen 443 ssl http2;", f"listen {FRONT}:{port} ssl http2;", text)
    text = re.sub(r"\n\s*listen \[::\]:443 ssl http2;", "", text)
    text = text.replace("server 127.0.0.1:8470;", f"server {backend};")
    text = text.replace("/etc/letsencrypt/live/chat.a.example/fullchain.pem", str(crt))
    text = text.replace("/etc/letsencrypt/live/chat.a.example/privkey.pem", str(pem))
    assert str(crt) in text and f"server {backend};" in text and f":{port} ssl" in text
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
    nginx = Nginx(d, server_block(port, f"{BACK}:{back_port}", crt, pem), port)
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
