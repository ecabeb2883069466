"""Data does not pile up: mail records (with the mail's text) and their chats older
than `[presence] retention_days` are purged by the service itself, in batches; a chat
still in use stays whole; a purged Mail-ID is refused like any other old one."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailtalk.config import ConfigError
from presence_api.server import purge_old_mails_once
from presence_api.store import Mail
from support.presence_app import make_config, start_presence

ALICE, BOB = "alice@a.test", "bob@b.test"
DAY = 86400


async def test_old_records_go_and_chats_in_use_stay(tmp_path: Path) -> None:
    p = await start_presence(tmp_path, retention_days=40)
    try:
        await p.add_user(ALICE)
        old = await p.record(ALICE, [BOB], subject="old, quiet")
        talked = await p.record(ALICE, [BOB], subject="old, still talked about")
        p.clock.advance(20 * DAY)
        newer = await p.record(ALICE, [BOB], subject="newer")
        p.clock.advance(21 * DAY)                           # old ones: 41 days
        await p.svc.store.join(talked, BOB, p.clock())
        await p.svc.store.add_message(talked, BOB, "still on it", p.clock())
        assert await purge_old_mails_once(p.svc, p.clock()) == 1
        assert await p.svc.store.get_mail(old) is None
        assert (await p.svc.store.get_mail(talked)) is not None          # whole
        assert [m.text for m in await p.svc.store.messages(talked, 10)] == ["still on it"]
        assert await p.svc.store.members(talked) == [BOB]
        assert (await p.svc.store.get_mail(newer)) is not None
        answer = await p.lookup(ALICE, old, [BOB])
        assert answer["status"] == "unknown" and answer["links"] == {}
    finally:
        await p.client.close()


async def test_many_old_records_go_in_batches(tmp_path: Path) -> None:
    p = await start_presence(tmp_path)
    try:
        store = p.svc.store
        for i in range(1200):
            await store.put_mail(Mail(f"m{i:04d}" + "A" * 40, ALICE, True, created_at=1000.0))
        calls = []
        real = store.purge_mails

        async def counted(before: float, batch: int) -> list[str]:
            ids = await real(before, batch)
            calls.append(len(ids))
            return ids
        store.purge_mails = counted                         # type: ignore[method-assign]
        assert await purge_old_mails_once(p.svc, p.clock()) == 1200
        assert calls == [500, 500, 200, 0]
        assert await store.recent_mail_states(10) == []
    finally:
        await p.client.close()


def test_retention_days_is_checked_against_the_mail_id_lifetime(tmp_path: Path) -> None:
    assert make_config(tmp_path).presence.retention_days == 60    # link lifetime + 30
    with pytest.raises(ConfigError, match=r"test\.toml: \[presence\] retention_days: "
                                          r"must be at least \[site\] mail_id_lifetime_days"):
        make_config(tmp_path, retention_days=10)
    with pytest.raises(ConfigError, match=r"\[presence\] retention_days: must be at least 1"):
        make_config(tmp_path, retention_days=0)
