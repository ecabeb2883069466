"""The presence service's JSON API through aiohttp's test client (in-process, real SQLite)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp import ClientSession, TCPConnector
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from support.presence_app import Presence, start_presence

ALICE = "alice@a.test"


@pytest.fixture
async def p(tmp_path: Path) -> AsyncIterator[Presence]:
    pres = await start_presence(tmp_path, lookups_per_minute_per_client=1000)
    await pres.add_user(ALICE)
    yield pres
    await pres.client.close()


async def test_openapi_document_has_both_paths(p: Presence) -> None:
    r = await p.client.get("/openapi.json")
    assert r.status == 200
    doc = json.loads(await r.text())
    assert doc["openapi"].startswith("3.")
    assert {"/api/v1/mails", "/api/v1/lookup"} <= set(doc["paths"])
    assert doc["paths"]["/api/v1/mails"]["post"]["security"] == [{"outbox": []}]
    validate(doc)                   # a real OpenAPI 3 validator: raises if not valid
    broken = json.loads(json.dumps(doc))
    del broken["paths"]["/api/v1/lookup"]["post"]["responses"]
    with pytest.raises(OpenAPIValidationError):
        validate(broken)            # and it can fail


async def test_mails_needs_the_outbox_bearer_token(p: Presence) -> None:
    record = {"mail_id": p.mail_ids.issue(ALICE), "account": ALICE, "recipients": ["b@b.test"]}
    r = await p.client.post("/api/v1/mails", json=record)
    assert r.status == 401
    r = await p.client.post("/api/v1/mails", json=record,
                            headers={"Authorization": "Bearer " + "0" * 64})
    assert r.status == 401
    r = await p.client.post("/api/v1/mails", json=record, headers=p.bearer())
    assert r.status == 201


async def test_mails_is_idempotent_on_mail_id(p: Presence) -> None:
    mid = await p.record(ALICE, ["bob@b.test"], subject="First")
    r = await p.client.post("/api/v1/mails", headers=p.bearer(), json={
        "mail_id": mid, "account": ALICE, "recipients": ["eve@e.test"], "subject": "Second"})
    assert r.status == 200 and (await r.json())["stored"] is False
    mail = await p.svc.store.get_mail(mid)
    assert mail is not None and mail.subject == "First" and mail.recipients == ("bob@b.test",)


@pytest.mark.parametrize("change", ["forged", "other_account", "foreign_domain", "not_json",
                                   "recipients_not_list", "bad_recipient"])
async def test_mails_refuses_bad_records(p: Presence, change: str) -> None:
    record: dict = {"mail_id": p.mail_ids.issue(ALICE), "account": ALICE,
                    "recipients": ["bob@b.test"], "subject": "s", "body_text": "b"}
    if change == "forged":
        record["mail_id"] = "A" * 44
    elif change == "other_account":
        record["mail_id"] = p.mail_ids.issue("mallory@a.test")
    elif change == "foreign_domain":
        record["account"] = "alice@elsewhere.test"
        record["mail_id"] = p.mail_ids.issue("alice@elsewhere.test")
    elif change == "recipients_not_list":
        record["recipients"] = "bob@b.test"
    elif change == "bad_recipient":
        record["recipients"] = ["not an address"]
    body = b"{not json" if change == "not_json" else json.dumps(record).encode()
    r = await p.client.post("/api/v1/mails", data=body, headers={
        **p.bearer(), "Content-Type": "application/json"})
    assert r.status == 400, await r.text()
    assert await p.svc.store.get_mail(record["mail_id"]) is None


async def test_lookup_refusals_are_one_answer_with_the_same_work(p: Presence) -> None:
    """Unknown account, wrong, forged, expired Mail-ID: byte-identical answers, and each
    path does exactly one HMAC verify and one memo look-up (same time, by construction)."""
    calls = {"verify": 0, "store": 0}
    real_verify, real_ctx = p.svc.mail_ids.verify, p.svc.lookups.context

    def verify(account: str, token: str) -> bool:
        calls["verify"] += 1
        return real_verify(account, token)

    def ctx(account: str, mail_id: str):  # type: ignore[no-untyped-def]
        calls["store"] += 1
        return real_ctx(account, mail_id)

    p.svc.mail_ids.verify = verify  # type: ignore[method-assign]
    p.svc.lookups.context = ctx  # type: ignore[method-assign]

    expired = p.mail_ids.issue(ALICE)
    p.clock.advance(31 * 86400)                    # past mail_id_lifetime_days (30)
    cases = {
        "unknown account": ("nobody@a.test", p.mail_ids.issue("nobody@a.test")),
        "wrong Mail-ID": (ALICE, p.mail_ids.issue("bob@a.test")),
        "forged Mail-ID": (ALICE, "Z" * 44),
        "malformed Mail-ID": (ALICE, "short"),
        "expired Mail-ID": (ALICE, expired),
        "foreign account": ("alice@b.test", p.mail_ids.issue("alice@b.test")),
    }
    answers = {}
    for name, (account, mid) in cases.items():
        before = dict(calls)
        r = await p.client.post("/api/v1/lookup", json={
            "account": account, "mail_id": mid, "recipients": ["bob@b.test"]})
        assert r.status == 200, name
        answers[name] = await r.read()
        assert calls["verify"] - before["verify"] == 1, name
        assert calls["store"] - before["store"] == 1, name
    assert len(set(answers.values())) == 1, answers
    assert json.loads(next(iter(answers.values()))) == {
        "status": "unknown", "checked": json.loads(answers["forged Mail-ID"])["checked"],
        "links": {}}
    # and a valid one differs: the test can fail
    good = await p.lookup(ALICE, p.mail_ids.issue(ALICE), ["bob@b.test"])
    assert good["status"] == "offline" and good["links"]


async def test_lookup_before_record_gives_links_and_repeats_them(p: Presence) -> None:
    mid = p.mail_ids.issue(ALICE)
    a = await p.lookup(ALICE, mid, ["Bob@B.Test", "carol@c.test", "junk"])
    assert set(a["links"]) == {"Bob@B.Test", "carol@c.test"}     # keys as asked
    assert all(u.startswith(p.svc.cfg.presence.public_url + "/c/") for u in a["links"].values())
    assert a["links"]["Bob@B.Test"] != a["links"]["carol@c.test"]
    b = await p.lookup(ALICE, mid, ["Bob@b.test", "carol@c.test"])
    # same link when asked again; bound to the recipient with its domain lowercased
    assert b["links"] == {"Bob@b.test": a["links"]["Bob@B.Test"],
                          "carol@c.test": a["links"]["carol@c.test"]}
    bob = p.link_path(b["links"]["Bob@b.test"])
    r = await p.client.get(bob)
    assert "You: Bob@b.test" in await r.text()
    # lookups and fetching the page store nothing (a mail scanner fetches URLs) ...
    assert await p.svc.store.get_mail(mid) is None
    # ... the page's WebSocket (a real open) stores a placeholder of the mail
    ws = await p.client.ws_connect("/ws" + bob, headers={"Origin": p.origin})
    assert (await ws.receive_json())["you"] == "Bob@b.test"
    await ws.close()
    stub = await p.svc.store.get_mail(mid)
    assert stub is not None and not stub.recorded and stub.account == ALICE
    # the record arrives late: it completes the placeholder
    r = await p.client.post("/api/v1/mails", headers=p.bearer(), json={
        "mail_id": mid, "account": ALICE, "recipients": ["Bob@b.test"], "subject": "Late"})
    assert r.status == 201
    assert (await p.svc.store.get_mail(mid)).subject == "Late"  # type: ignore[union-attr]
    c = await p.lookup(ALICE, mid, ["Bob@b.test", "dave@d.test"])
    assert c["links"] == {"Bob@b.test": a["links"]["Bob@B.Test"]}  # only its recipients now
    # and a link given before the record to someone it does not list opens no more
    assert (await p.client.get(p.link_path(a["links"]["carol@c.test"]))).status == 404
    assert (await p.client.get(bob)).status == 200


async def test_lookup_after_record_gives_links_only_to_its_recipients(p: Presence) -> None:
    mid = await p.record(ALICE, ["bob@b.test", "carol@c.test"])
    a = await p.lookup(ALICE, mid, ["bob@b.test", "eve@e.test", "CAROL@c.test"])
    assert set(a["links"]) == {"bob@b.test", "CAROL@c.test"}


async def test_lookup_refuses_more_than_100_recipients(p: Presence) -> None:
    r = await p.client.post("/api/v1/lookup", json={
        "account": ALICE, "mail_id": p.mail_ids.issue(ALICE),
        "recipients": [f"r{i}@b.test" for i in range(101)]})
    assert r.status == 400


async def test_link_is_bound_to_one_recipient_and_cannot_be_altered(p: Presence) -> None:
    mid = await p.record(ALICE, ["bob@b.test", "carol@c.test"])
    links = (await p.lookup(ALICE, mid, ["bob@b.test", "carol@c.test"]))["links"]
    bob = p.link_path(links["bob@b.test"])
    r = await p.client.get(bob)
    assert r.status == 200 and "You: bob@b.test" in await r.text()
    # one character changed: refused
    token = bob.rsplit("/", 1)[1]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert (await p.client.get("/c/" + tampered)).status == 404
    assert (await p.client.get("/c/" + token[:-1])).status == 404
    # a token for a recipient that was never issued one (computed with the key!) is refused
    # (links are self-verifying: the mail's record is what refuses it)
    never = p.svc.links.token(mid, ALICE, "eve@e.test")
    assert never is not None and (await p.client.get("/c/" + never)).status == 404
    # the recipient and the mail are inside the token, under its MAC: editing them in
    # Bob's token (the MAC kept) makes neither Carol's link nor a link of another mail
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    i = raw.index(b"bob@b.test")
    as_carol = bytes(raw[:i]) + b"carol@c.test" + bytes(raw[i + len(b"bob@b.test"):])
    other = await p.record(ALICE, ["bob@b.test"])
    other_raw = base64.urlsafe_b64decode(other + "=" * (-len(other) % 4))
    other_mail = bytes(raw[:1]) + other_raw + bytes(raw[1 + len(other_raw):])
    for forged in (as_carol, other_mail):
        t = base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
        assert re.fullmatch(r"[A-Za-z0-9_-]+", t)
        assert (await p.client.get("/c/" + t)).status == 404
    # nor does any single byte changed anywhere in it
    for k in range(0, len(raw), 7):
        flipped = bytearray(raw)
        flipped[k] ^= 0x01
        t = base64.urlsafe_b64encode(bytes(flipped)).rstrip(b"=").decode()
        assert (await p.client.get("/c/" + t)).status == 404, k
    assert (await p.client.get(bob)).status == 200        # and the genuine one still opens


async def test_link_expires(tmp_path: Path) -> None:
    p = await start_presence(tmp_path, link_lifetime_days=2)
    try:
        await p.add_user(ALICE)
        mid = await p.record(ALICE, ["bob@b.test"])
        url = (await p.lookup(ALICE, mid, ["bob@b.test"]))["links"]["bob@b.test"]
        assert (await p.client.get(p.link_path(url))).status == 200
        p.clock.advance(2 * 86400 + 1)
        r = await p.client.get(p.link_path(url))
        assert r.status == 410 and "expired" in await r.text()
    finally:
        await p.client.close()


async def test_lookup_rate_limit_per_client_address(tmp_path: Path) -> None:
    """The limit counts refusals: a guesser is held back, a busy peer is not."""
    p = await start_presence(tmp_path, lookups_per_minute_per_client=3)
    try:
        await p.add_user(ALICE)
        valid = []
        for _ in range(40):             # far over the limit, every one a valid Mail-ID
            mid = await p.record(ALICE, ["bob@b.test"])
            valid.append(mid)
            answer = await p.lookup(ALICE, mid, ["bob@b.test"])
            assert answer["status"] != "unknown" and answer["links"], answer
        body = {"account": ALICE, "mail_id": "Z" * 44, "recipients": []}
        refusal = None
        for _ in range(3):
            r = await p.client.post("/api/v1/lookup", json=body)
            assert r.status == 200
            refusal = refusal or await r.read()
            assert await r.read() == refusal        # refusals stay identical
        r = await p.client.post("/api/v1/lookup", json=body)
        assert r.status == 429 and r.headers["Retry-After"]
        assert p.svc.degraded["rate_limited"] == 1
        # another client address is not held back
        other = ClientSession(connector=TCPConnector(local_addr=("127.0.12.9", 0)))
        try:
            r2 = await other.post(p.client.make_url("/api/v1/lookup"), json=body)
            assert r2.status == 200
        finally:
            await other.close()
        p.clock.advance(61)
        assert (await p.client.post("/api/v1/lookup", json=body)).status == 200
    finally:
        await p.client.close()


async def test_lookup_answers_online_while_a_page_is_connected(p: Presence) -> None:
    mid = p.mail_ids.issue(ALICE)
    assert (await p.lookup(ALICE, mid, []))["status"] == "offline"
    await p.login(ALICE)
    ws = await p.client.ws_connect("/ws", headers={"Origin": p.origin})
    try:
        assert (await ws.receive_json())["type"] == "hello"
        assert (await p.lookup(ALICE, mid, []))["status"] == "online"
    finally:
        await ws.close()


async def test_a_token_has_one_spelling(p: Presence) -> None:
    """base64's last character may carry unused bits: a variant that decodes to the same
    bytes is still not the link (regression: the one-character tamper check above was
    flaky when the changed character differed only in those bits)."""
    mid = await p.record(ALICE, ["bob@b.test"])
    url = (await p.lookup(ALICE, mid, ["bob@b.test"]))["links"]["bob@b.test"]
    token = p.link_path(url).rsplit("/", 1)[1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused_bits = {2: 4, 3: 2}.get(len(token) % 4, 0)
    assert unused_bits, "this recipient's token happens to end on a byte boundary"
    last = alphabet.index(token[-1])
    variant = token[:-1] + alphabet[last ^ 1]         # flip an unused low bit
    assert base64.urlsafe_b64decode(variant + "=" * (-len(variant) % 4)) == \
        base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert (await p.client.get("/c/" + variant)).status == 404
    assert (await p.client.get("/c/" + token)).status == 200
