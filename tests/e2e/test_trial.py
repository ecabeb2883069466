"""`mailtalk trial` against the real services of one `mailtalk run` on the trial
domain `localhost`, found through `[dns] static = { localhost = "self" }` as the
embedded defaults have it: the real pymilter milter, presence service and content
filter; the trial takes the mail back at the re-injection address. A real browser
logs the sender in, and the next trial says yes.
"""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from support.mailtalk import MailtalkService, run_mailtalk
from support.wait import free_port

pytest.importorskip("playwright")
from playwright.async_api import expect  # noqa: E402

HOST = "127.0.20.1"
ALICE, BOB, CAROL = "alice@localhost", "bob@localhost", "carol@localhost"
PASSWORD = "trial-password-1"
WAIT = 20_000
LINK = re.compile(r"chat=<(http://[^>]+/c/[A-Za-z0-9_-]+)>")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[MailtalkService]:
    url = f"http://{HOST}:{free_port(HOST)}"
    config = {
        "domains": {"names": ["localhost"]},
        "milter": {"socket": f"inet:{free_port(HOST)}@{HOST}"},
        "filter": {"listen": f"{HOST}:{free_port(HOST)}",
                   "reinject": f"{HOST}:{free_port(HOST)}"},
        "presence": {"listen": url.removeprefix("http://"), "public_url": url},
        "dns": {"static": {"localhost": "self"}},
    }
    svc = MailtalkService(tmp_path, config)
    with svc:
        r = svc.command("user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        yield svc


def trial(svc: MailtalkService, *args: str) -> tuple[int, str]:
    r = run_mailtalk(svc.config_path, "trial", *args, timeout=60)
    return r.returncode, r.stdout + r.stderr


def test_embedded_defaults_find_their_own_service() -> None:
    """The embedded defaults answer _mailtalk.localhost without DNS, with this site's
    own record (what the trial below relies on)."""
    from mailtalk.config import load_embedded
    assert dict(load_embedded().dns.static) == {"localhost": "self"}


async def test_trial_says_no_then_yes_with_each_recipients_link(
        service: MailtalkService, browser: Any) -> None:
    code, out = trial(service, ALICE, BOB, CAROL)
    assert code == 0, out
    assert "added X-Messenger-Account: alice@localhost, X-Mail-ID: " in out
    assert out.count("X-Sender-Online: no; account=alice@localhost;") == 2, out
    links = LINK.findall(out)
    assert len(set(links)) == 2, out             # bob's and carol's, each their own
    assert out.count("notice at the top of the text:") == 2, out
    assert "mailtalk: alice@localhost was offline when this mail arrived." in out
    for link, who in zip(links, (BOB, CAROL)):
        with urllib.request.urlopen(link, timeout=10) as page:
            assert page.status == 200 and who in page.read().decode()

    url = service.config_path.read_text().split('public_url = "')[1].split('"')[0]
    page = await (await browser.new_context()).new_page()
    await page.goto(url + "/login")
    await page.fill("input[name=account]", ALICE)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page.locator("#my-status")).to_have_text("online", timeout=WAIT)
    code, out = trial(service, ALICE, BOB)
    assert code == 0, out
    assert "X-Sender-Online: yes; account=alice@localhost;" in out, out
    assert "mailtalk: alice@localhost was online when this mail arrived." in out


def test_trial_names_what_stands_in_the_way(service: MailtalkService) -> None:
    """A sender outside [domains] names, and a re-injection address in use (Postfix
    behind the filter): exit 1 with the reason, nothing hangs."""
    code, out = trial(service, "mallory@evil.test", BOB)
    assert code == 1 and "must be an address of [domains] names (localhost)" in out, out
    reinject = service.config_path.read_text().split('reinject = "')[1].split('"')[0]
    host, port = reinject.rsplit(":", 1)
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind((host, int(port)))
        busy.listen()
        code, out = trial(service, ALICE, BOB)
    assert code == 1 and f"cannot listen on {reinject} ([filter] reinject)" in out, out
