"""Metrics and health: the presence service's /metrics, /healthz and /readyz, and the
`[metrics] listen` of real `mailtalk filter` and `mailtalk milter` processes, each
counting what the test did (read from the text Prometheus scrapes)."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mailtalk.cli import milter_client
from support.mailtalk import MailtalkService
from support.presence_app import Presence, start_presence
from support.presence_ws import links_for, next_of, sender_ws
from support.smtp import make_message, smtp_send
from support.smtp_sink import start_sink
from support.wait import free_port

HOST = "127.0.25.1"
ALICE, BOB = "alice@a.test", "bob@b.test"


def samples(text: str) -> dict[str, float]:
    """`name{label="v",...}` -> value, for every sample of a scrape."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


async def scrape(p: Presence) -> dict[str, float]:
    r = await p.client.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    return samples(await r.text())


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_presence_counts_lookups_refusals_messages_and_pages(tmp_path: Path) -> None:
    p = await start_presence(tmp_path, host=HOST)
    try:
        await p.add_user(ALICE)
        before = await scrape(p)
        mid, links = await links_for(p, [BOB])               # one lookup: no (offline)
        bad = p.mail_ids.issue("mallory@a.test")               # no such account: refused
        await p.lookup("mallory@a.test", bad, [BOB])
        alice = await sender_ws(p)
        await alice.send_json({"type": "join", "mail_id": mid})
        await next_of(alice, "room")
        await alice.send_json({"type": "send", "mail_id": mid, "text": "hi"})
        await next_of(alice, "message")
        after = await scrape(p)
        assert delta(after, before, 'mailtalk_presence_lookups_total{answer="no"}') == 1
        assert delta(after, before, 'mailtalk_presence_lookups_total{answer="unknown"}') == 1
        assert delta(after, before,
                     'mailtalk_presence_lookup_refusals_total{reason="invalid_claim"}') == 1
        assert delta(after, before, "mailtalk_presence_chat_messages_total") == 1
        assert delta(after, before, "mailtalk_presence_lookup_seconds_count") == 2
        assert after["mailtalk_presence_pages"] == 1
        await alice.close()
        r = await p.client.get("/healthz")
        assert r.status == 200 and await r.text() == "ok\n"
        r = await p.client.get("/readyz")
        assert r.status == 200 and (await r.json())["database"] == "ok"
        await p.svc.store.close()                              # the database is gone
        r = await p.client.get("/readyz")
        assert r.status == 503 and (await r.json())["ready"] is False
    finally:
        await p.client.close()


async def test_metrics_answer_only_the_allowed_addresses(tmp_path: Path) -> None:
    p = await start_presence(tmp_path, host=HOST)
    try:
        object.__setattr__(p.svc.cfg.metrics, "allow", ())     # nobody
        r = await p.client.get("/metrics")
        assert r.status == 403 and "[metrics] allow" in await r.text()
        assert (await p.client.get("/healthz")).status == 200  # health is for anyone
    finally:
        await p.client.close()


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def test_filter_and_milter_processes_count_on_their_listener(tmp_path: Path) -> None:
    sink, handler, sink_port = await start_sink(HOST)
    metrics_at = f"{HOST}:{free_port(HOST)}"
    config = {"domains": {"names": ["a.test"]},
              "milter": {"socket": f"inet:{free_port(HOST)}@{HOST}",
                         "presence_api": f"http://{HOST}:{free_port(HOST)}",
                         "outbox_retry_max": 1},
              "filter": {"listen": f"{HOST}:{free_port(HOST)}",
                         "reinject": f"{HOST}:{sink_port}"},
              "metrics": {"listen": metrics_at}}
    svc = MailtalkService(tmp_path, config)
    svc.endpoints.append(metrics_at)
    try:
        with svc:
            status, health = await asyncio.to_thread(http_get, f"http://{metrics_at}/healthz")
            assert (status, health) == (200, "ok\n")
            _, text = await asyncio.to_thread(http_get, f"http://{metrics_at}/metrics")
            before = samples(text)
            host, port = config["filter"]["listen"].split(":")
            await asyncio.to_thread(smtp_send, host, int(port), make_message(subject="no claim"),
                                    sender=ALICE, rcpts=[BOB])
            forged = [("From", "Alice <alice@a.test>"), ("To", BOB),
                      ("X-Mail-ID", "forged"), ("Subject", "hi")]
            result = await asyncio.to_thread(
                milter_client.pass_through, config["milter"]["socket"], sender=ALICE,
                recipients=[BOB], login=ALICE, headers=forged, body=b"hi\r\n",
                queue_id="QID1")
            assert any(n == "X-Mail-ID" for n, _ in result.added)
            _, text = await asyncio.to_thread(http_get, f"http://{metrics_at}/metrics")
            after = samples(text)
    finally:
        sink.close()
    assert handler.got                                          # the mail went on
    assert delta(after, before, "mailtalk_filter_mails_total") == 1
    assert delta(after, before,
                 'mailtalk_filter_answers_total{answer="none",reason="no_claim"}') == 1
    assert delta(after, before, "mailtalk_milter_mails_total") == 1
    assert delta(after, before, "mailtalk_milter_claims_total") == 1
    assert delta(after, before, "mailtalk_milter_forged_removed_total") == 1
    assert after["mailtalk_milter_outbox_backlog"] >= 1        # no presence service here
    assert after["mailtalk_milter_outbox_oldest_seconds"] >= 0
    assert re.search(r"metrics on http://", svc.log())
