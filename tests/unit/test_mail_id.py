"""Mail-IDs: well-formed, unguessable, bound to one account, expiring; the site key."""

import os
import re
import stat

import pytest

from mailtalk.constants import MAIL_ID_PATTERN
from mailtalk.mailid import (MailIds, SiteKeyError, derive_key, is_well_formed,
                             load_or_create_site_key, outbox_api_token)

KEY = bytes(range(32))


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_issue_is_well_formed_and_verifies_for_its_account_only():
    ids = MailIds(KEY, 30)
    token = ids.issue("alice@a.test")
    assert re.fullmatch(MAIL_ID_PATTERN, token) and 22 <= len(token) <= 64
    assert ids.verify("alice@a.test", token)
    assert ids.verify("ALICE@A.TEST", token)           # accounts compare case-insensitively
    assert not ids.verify("mallory@a.test", token)
    assert not MailIds(bytes(32), 30).verify("alice@a.test", token)   # another site's key


def test_tokens_do_not_repeat():
    ids = MailIds(KEY, 30)
    assert len({ids.issue("alice@a.test") for _ in range(1000)}) == 1000


def test_forged_and_tampered_tokens_fail():
    ids = MailIds(KEY, 30)
    token = ids.issue("alice@a.test")
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    for bad in (flipped, token[:-1], token + "A", "A" * 44, "x" * 22, "", "not a token!", "é" * 30):
        assert not ids.verify("alice@a.test", bad), bad


def test_expiry():
    clock = Clock()
    ids = MailIds(KEY, 30, clock=clock)
    token = ids.issue("alice@a.test")
    assert ids.expires_at(token) == clock.t + 30 * 86400
    clock.t += 30 * 86400 - 1
    assert ids.verify("alice@a.test", token)
    clock.t += 2
    assert not ids.verify("alice@a.test", token)


def test_well_formed_syntax():
    assert is_well_formed("a" * 22) and is_well_formed("A-_z09" * 10)
    assert not is_well_formed("a" * 21) and not is_well_formed("a" * 65)
    assert not is_well_formed("a" * 30 + "=") and not is_well_formed("a" * 30 + "\n")


def test_site_key_created_once_with_mode_0600(tmp_path):
    path = tmp_path / "sub" / "site.key"
    key = load_or_create_site_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_site_key(path) == key


def test_bad_site_key_is_named(tmp_path):
    path = tmp_path / "site.key"
    path.write_bytes(b"short")
    with pytest.raises(SiteKeyError, match=str(path)):
        load_or_create_site_key(path)


def test_derived_keys_differ_per_purpose():
    assert derive_key(KEY, "mail-id") != derive_key(KEY, "link")
    assert outbox_api_token(KEY) == outbox_api_token(KEY) != outbox_api_token(bytes(32))


def test_a_site_key_readable_by_others_is_tightened(tmp_path, caplog):
    import os
    from mailtalk.mailid import load_or_create_site_key
    key = tmp_path / "site.key"
    key.write_bytes(b"k" * 32)
    os.chmod(key, 0o644)
    assert load_or_create_site_key(key) == b"k" * 32
    assert key.stat().st_mode & 0o777 == 0o600
    assert "readable by others" in caplog.text
