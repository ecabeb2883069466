"""POST /api/v1/lookups, the batch form of the lookup: every lookup in it is answered
exactly as POST /api/v1/lookup answers it alone, does the same work, and counts
against the client's rate limit. aiohttp's test client, in-process, real SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from mailtalk.constants import LOOKUP_BATCH_MAX
from support.presence_extra import Presence, start_presence

ALICE = "alice@a.test"


@pytest.fixture
async def p(tmp_path: Path) -> AsyncIterator[Presence]:
    pres = await start_presence(tmp_path, lookups_per_minute_per_client=1000)
    await pres.add_user(ALICE)
    yield pres
    await pres.client.close()


async def batch(p: Presence, lookups: Any) -> tuple[int, Any]:
    r = await p.client.post("/api/v1/lookups", json={"lookups": lookups})
    return r.status, await r.json()


def lookup(account: str, mail_id: str, recipients: list[str]) -> dict[str, Any]:
    return {"account": account, "mail_id": mail_id, "recipients": recipients}


async def test_each_lookup_in_a_batch_gets_the_answer_it_gets_alone(p: Presence) -> None:
    recorded = await p.record(ALICE, ["bob@b.test"])     # only bob gets a link for it
    lookups = [
        lookup(ALICE, p.mail_ids.issue(ALICE), ["bob@b.test", "Carol@C.test"]),
        lookup("nobody@a.test", p.mail_ids.issue("nobody@a.test"), ["bob@b.test"]),
        lookup(ALICE, "Z" * 44, ["bob@b.test"]),                      # forged
        lookup(ALICE, p.mail_ids.issue("bob@a.test"), ["bob@b.test"]),  # another's
        lookup(ALICE, p.mail_ids.issue(ALICE), []),
        lookup(ALICE, recorded, ["bob@b.test", "eve@e.test"]),
    ]
    status, body = await batch(p, lookups)
    assert status == 200
    alone = [await p.lookup(x["account"], x["mail_id"], x["recipients"]) for x in lookups]
    assert body == {"answers": alone}
    assert [a["status"] for a in alone] == ["offline", "unknown", "unknown", "unknown",
                                           "offline", "offline"]
    assert set(alone[0]["links"]) == {"bob@b.test", "Carol@C.test"}   # the test can fail


async def test_a_batch_does_per_lookup_the_work_of_a_lookup(p: Presence) -> None:
    # One HMAC verify and one store call per lookup, refused or not: a batch does
    # not tell a valid Mail-ID from a forged one by its time either.
    calls = {"verify": 0, "store": 0}
    real_verify, real_ctx = p.svc.mail_ids.verify, p.svc.store.lookup_context

    def verify(account: str, token: str) -> bool:
        calls["verify"] += 1
        return real_verify(account, token)

    async def ctx(account: str, mail_id: str) -> Any:
        calls["store"] += 1
        return await real_ctx(account, mail_id)

    p.svc.mail_ids.verify = verify  # type: ignore[method-assign]
    p.svc.store.lookup_context = ctx  # type: ignore[method-assign]
    lookups = [lookup("nobody@a.test", p.mail_ids.issue("nobody@a.test"), []),
               lookup(ALICE, "Z" * 44, []), lookup(ALICE, "short", []),
               lookup(ALICE, p.mail_ids.issue(ALICE), ["bob@b.test"])]
    status, body = await batch(p, lookups)
    assert status == 200 and calls == {"verify": 4, "store": 4}
    refusals = {repr(a) for a in body["answers"][:3]}
    assert len(refusals) == 1 and body["answers"][3]["links"]


async def test_each_lookup_in_a_batch_counts_against_the_rate_limit(tmp_path: Path) -> None:
    p = await start_presence(tmp_path, lookups_per_minute_per_client=3)
    try:
        one = lookup(ALICE, "Z" * 44, [])
        assert (await batch(p, [one] * 4))[0] == 429
        p.clock.advance(61)
        assert (await batch(p, [one] * 3))[0] == 200
        r = await p.client.post("/api/v1/lookup", json=one)
        assert r.status == 429 and r.headers["Retry-After"]
    finally:
        await p.client.close()


@pytest.mark.parametrize("body", [
    {}, {"lookups": []}, {"lookups": "x"}, {"lookups": [{"account": ALICE}]},
    {"lookups": [lookup(ALICE, "Z" * 44, ["x"] * 101)]},
    {"lookups": [lookup(ALICE, "Z" * 44, [])] * (LOOKUP_BATCH_MAX + 1)}, [1, 2],
])
async def test_a_malformed_batch_is_400(p: Presence, body: Any) -> None:
    r = await p.client.post("/api/v1/lookups", json=body)
    assert r.status == 400 and "error" in await r.json()


async def test_openapi_documents_the_batch(p: Presence) -> None:
    doc = await (await p.client.get("/openapi.json")).json()
    op = doc["paths"]["/api/v1/lookups"]["post"]
    assert op["operationId"] == "lookupBatch" and set(op["responses"]) >= {"200", "400", "429"}
    items = doc["components"]["schemas"]["LookupBatch"]["properties"]["lookups"]
    assert items["maxItems"] == LOOKUP_BATCH_MAX
