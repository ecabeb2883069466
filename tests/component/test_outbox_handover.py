"""The outbox against the REAL presence service (presence_api.server.start), in one
event loop: records written while the service is down, restarting, or refusing
arrive exactly once when it is back; a restart of the milter side loses nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Awaitable, Callable

import pytest

from mailtalk.config import Config, parse_text
from mailtalk.mailid import MailIds, load_or_create_site_key, outbox_api_token
from mailtalk.mailrecord import MailRecord
from mailtalk_milter.outbox import Handover, Outbox, classify
from presence_api import server
from presence_api.service import SERVICE
from support import free_port

HOST = "127.0.11.3"


def config(tmp: Path, port: int) -> Config:
    return parse_text(
        f'[site]\nstate_dir = "{tmp}"\n[domains]\nnames = ["a.test"]\n'
        f'[milter]\npresence_api = "http://{HOST}:{port}"\noutbox_retry_max = 0.3\n'
        f'[presence]\nlisten = "{HOST}:{port}"\npublic_url = "http://{HOST}:{port}"\n',
        str(tmp / "t.toml"))


async def until(pred: Callable[[], Awaitable[bool] | bool], timeout: float = 15.0,
                what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if not isinstance(v, bool):
            v = await v
        if v:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def record(ids: MailIds, n: int, account: str = "alice@a.test") -> MailRecord:
    return MailRecord(mail_id=ids.issue(account), account=account,
                      message_id=f"<{n}@a.test>", subject=f"mail {n}", date="",
                      recipients=["bob@b.test"], body_text=f"text {n}", queue_id=f"Q{n}")


async def stored_count(running: server.Running, mail_ids: list[str]) -> int:
    store = running._runner.app[SERVICE].store
    return sum([await store.get_mail(m) is not None for m in mail_ids])


@pytest.mark.parametrize("status,verdict", [(200, "delivered"), (201, "delivered"),
                                            (400, "drop"), (401, "drop"), (408, "retry"),
                                            (429, "retry"), (500, "retry"), (503, "retry")])
def test_answers(status: int, verdict: str) -> None:
    assert classify(status) == verdict


async def test_down_then_up_every_record_arrives_once(tmp_path: Path) -> None:
    cfg = config(tmp_path, free_port(HOST))
    key = load_or_create_site_key(cfg.site.secret_file)
    ids = MailIds(key, 30)
    box = Outbox(cfg.milter.outbox)
    hand = Handover(box, cfg.milter.presence_api, outbox_api_token(key),
                    cfg.milter.outbox_retry_max, max_age=30 * 86400)
    box.on_added = hand.wake_threadsafe
    hand.start()
    sent: list[str] = []
    presence = None
    try:
        # 1. The service is down: records wait, each tried and deferred at least once.
        for n in range(5):
            r = record(ids, n)
            await asyncio.to_thread(box.add, r)        # as libmilter's thread does
            sent.append(r.mail_id)
        await until(lambda: all(p.attempts > 0 for p in box.due(1e12)) and box.count() == 5,
                    what="every record tried while the service is down")
        assert hand.delivered == 0

        # 2. It comes up: every record arrives, the outbox empties.
        presence = await server.start(cfg, asyncio.Event())
        await until(lambda: box.count() == 0, what="the outbox to empty")
        assert hand.delivered == 5 and hand.dropped == 0
        assert await stored_count(presence, sent) == 5

        # 3. It restarts while more mail is sent.
        await presence.close()
        presence = None
        for n in range(5, 8):
            r = record(ids, n)
            await asyncio.to_thread(box.add, r)
            sent.append(r.mail_id)
        await until(lambda: all(p.attempts > 0 for p in box.due(1e12)),
                    what="records tried while the service restarts")
        presence = await server.start(cfg, asyncio.Event())
        await until(lambda: box.count() == 0, what="the outbox to empty again")
        assert hand.delivered == 8 and await stored_count(presence, sent) == 8

        # 4. A record handed over twice (a crash between answer and delete) is stored
        #    once: the service answers 200, the outbox counts it delivered.
        again = record(ids, 99)
        again_json = again.to_json()
        await asyncio.to_thread(box.add, again)
        await until(lambda: box.count() == 0, what="record 99")
        await asyncio.to_thread(box.add, MailRecord(**{**again_json, "queue_id": "Q99b"}))
        await until(lambda: box.count() == 0 and hand.delivered == 10, what="the duplicate")
        mail = await presence._runner.app[SERVICE].store.get_mail(again.mail_id)
        assert mail is not None and mail.queue_id == "Q99"     # first copy kept

        # 5. A record the service refuses (forged Mail-ID) is dropped, not retried.
        forged = MailRecord(**{**record(ids, 100).to_json(), "mail_id": "A" * 44})
        await asyncio.to_thread(box.add, forged)
        await until(lambda: hand.dropped == 1 and box.count() == 0, what="the drop")
    finally:
        await hand.close()
        box.close()
        if presence is not None:
            await presence.close()


async def test_milter_side_restart_loses_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path, free_port(HOST))
    key = load_or_create_site_key(cfg.site.secret_file)
    ids = MailIds(key, 30)
    # Written by a milter that stopped before handing anything over.
    box = Outbox(cfg.milter.outbox)
    sent = []
    for n in range(3):
        r = record(ids, n)
        box.add(r)
        sent.append(r.mail_id)
    box.close()
    presence = await server.start(cfg, asyncio.Event())
    box = Outbox(cfg.milter.outbox)                      # the milter starts again
    hand = Handover(box, cfg.milter.presence_api, outbox_api_token(key), 0.3,
                    max_age=30 * 86400)
    hand.start()
    try:
        await until(lambda: box.count() == 0, what="the old records to go out")
        assert hand.delivered == 3 and await stored_count(presence, sent) == 3
    finally:
        await hand.close()
        box.close()
        await presence.close()
