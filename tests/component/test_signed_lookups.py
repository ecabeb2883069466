"""Links only for the recipient's own server: lookups signed with the key the
recipient's domain publishes (mailtalk/lookup_signing.py), fresh and not replayed; and
claims bound to their mail (the record's Message-ID). The presence service in-process;
the hooks' keys come from an injected resolver (no DNS server)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mailtalk.discovery import Discoverer
from mailtalk.lookup_signing import MAX_SKEW, public_key_text
from presence_api.server import make_app
from support.presence_app import Clock, Presence, make_config, signed
from support.static_dns import StaticResolver
from support.wait import free_port
from aiohttp.test_utils import TestClient, TestServer

HOST = "127.0.12.31"
ALICE = "alice@a.test"
KEY_A, KEY_B, KEY_B2, KEY_C, MADE_UP = (Ed25519PrivateKey.generate() for _ in range(5))


def record(domain: str, *keys: Ed25519PrivateKey) -> list[str]:
    ks = "".join(f"; k={public_key_text(k)}" for k in keys)
    return [f"v=mailtalk1; api=https://chat.{domain}{ks}"]


@pytest.fixture
async def p(tmp_path: Path) -> AsyncIterator[Presence]:
    clock = Clock()
    port = free_port(HOST)
    cfg = make_config(tmp_path, f"http://{HOST}:{port}", lookups_per_minute_per_client=10_000)
    # b.test publishes two keys (a key change), c.test one; a.test (alice's own site) one.
    resolver = StaticResolver({"_mailtalk.a.test": record("a.test", KEY_A),
                               "_mailtalk.b.test": record("b.test", KEY_B, KEY_B2),
                               "_mailtalk.c.test": record("c.test", KEY_C)})
    app = make_app(cfg, clock=clock, site_key=b"s" * 32,
                   discoverer=Discoverer(cfg.dns, resolver=resolver))
    client = TestClient(TestServer(app, host=HOST, port=port))
    await client.start_server()
    pres = Presence(client, clock, b"s" * 32)
    await pres.add_user(ALICE)
    yield pres
    await client.close()


async def ask(p: Presence, body: dict[str, Any], headers: dict[str, str]) -> Any:
    r = await p.client.post("/api/v1/lookup", data=json.dumps(body).encode(), headers=headers)
    assert r.status == 200
    return await r.read()


def lookup_body(mail_id: str, *rcpts: str) -> dict[str, Any]:
    return {"account": ALICE, "mail_id": mail_id, "message_id": "<m1@a.test>",
            "recipients": list(rcpts)}


def tampered(headers: dict[str, str], change: Callable[[bytes], bytes]) -> dict[str, str]:
    """`headers` with the signature's bytes changed by `change`."""
    label, _, value = headers["Signature"].partition("=")
    sig = change(base64.b64decode(value.strip(":")))
    return {**headers, "Signature": f"{label}=:{base64.b64encode(sig).decode()}:"}


async def test_bob_cannot_mint_carols_link(p: Presence) -> None:
    """Bob has alice's Mail-ID from his own copy and asks for carol (c.test): unsigned,
    signed with a made-up key, signed by another domain's real key, and replaying the
    c.test hook's own request: no link, and every refusal is the same bytes."""
    mid = await p.record(ALICE, ["bob@b.test", "carol@c.test"])
    body = lookup_body(mid, "carol@c.test")
    data = json.dumps(body).encode()
    path, now = p.svc.lookup_path, p.clock()
    genuine = signed(data, "c.test", path, now, KEY_C)
    first = json.loads(await ask(p, body, genuine))
    assert first["links"].keys() == {"carol@c.test"}        # the real hook: the test can fail
    refusals = {
        "unsigned": {"Content-Type": "application/json"},
        "made-up key": signed(data, "c.test", path, now, MADE_UP),
        "b.test's real key, keyid c.test": signed(data, "c.test", path, now, KEY_B),
        "b.test's real key, keyid b.test": signed(data, "b.test", path, now, KEY_B),
        "a replay of the c.test hook's request": genuine,
        "stale": signed(data, "c.test", path, now - MAX_SKEW - 5, KEY_C),
        "another path": signed(data, "c.test", "/elsewhere", now, KEY_C),
        "a flipped bit in the signature": tampered(signed(data, "c.test", path, now, KEY_C),
                                                   lambda sig: bytes([sig[0] ^ 1]) + sig[1:]),
        "a signature cut short": tampered(signed(data, "c.test", path, now, KEY_C),
                                          lambda sig: sig[:63]),
    }
    answers = {name: await ask(p, body, h) for name, h in refusals.items()}
    for name, raw in answers.items():
        assert json.loads(raw)["links"] == {}, name
        assert json.loads(raw)["status"] == "offline", name    # presence: today's rules
    assert len({json.loads(a)["links"].__repr__() for a in answers.values()}) == 1


async def test_each_hook_gets_links_for_its_own_recipients_only(p: Presence) -> None:
    mid = await p.record(ALICE, ["bob@b.test", "carol@c.test"])
    body = lookup_body(mid, "bob@b.test", "carol@c.test")
    data = json.dumps(body).encode()
    answer = json.loads(await ask(p, body, signed(data, "b.test", p.svc.lookup_path,
                                                  p.clock(), KEY_B)))
    assert answer["links"].keys() == {"bob@b.test"}


async def test_either_published_key_signs_during_a_key_change(p: Presence) -> None:
    mid = await p.record(ALICE, ["bob@b.test"])
    body = lookup_body(mid, "bob@b.test")
    data = json.dumps(body).encode()
    for key in (KEY_B, KEY_B2):
        answer = json.loads(await ask(p, body, signed(data, "b.test", p.svc.lookup_path,
                                                      p.clock(), key)))
        assert answer["links"].keys() == {"bob@b.test"}


async def test_a_claim_copied_onto_another_mail_gets_the_refusal(p: Presence) -> None:
    """Mallory copies alice's genuine X-Messenger-Account and X-Mail-ID onto a new
    mail: its Message-ID differs from the record's, and the answer is the refusal."""
    mid = await p.record(ALICE, ["bob@b.test"])

    async def by_b(body: dict[str, Any]) -> bytes:
        data = json.dumps(body).encode()
        return await ask(p, body, signed(data, "b.test", p.svc.lookup_path, p.clock(), KEY_B))
    good = json.loads(await by_b(lookup_body(mid, "bob@b.test")))
    assert good["status"] == "offline" and good["links"]
    forged = await by_b({**lookup_body(mid, "bob@b.test"), "message_id": "<other@evil.test>"})
    body = lookup_body(mid, "bob@b.test")
    del body["message_id"]
    missing = await by_b(body)
    refusal = await by_b({**lookup_body(p.mail_ids.issue("nobody@a.test"), "bob@b.test"),
                          "account": "nobody@a.test"})
    assert forged == missing == refusal
    assert json.loads(refusal) == {"status": "unknown", "checked": json.loads(refusal)["checked"],
                                   "links": {}}


async def test_deeply_nested_json_is_a_400_not_a_500(p: Presence) -> None:
    for path in ("/api/v1/lookup", "/api/v1/mails"):
        r = await p.client.post(path, data=b"[" * 100_000,
                                headers={"Content-Type": "application/json", **p.bearer()})
        assert r.status == 400, path
