"""SASL login -> messenger account, per [domains]."""

import pytest

from mailtalk.accounts import account_for_login, normalize_account
from mailtalk.config import DomainsConfig

DOMAINS = DomainsConfig(names=("a.test", "b.test"), login_domain="a.test")


def test_login_with_at_is_the_account():
    assert account_for_login("alice@a.test", DOMAINS) == "alice@a.test"
    assert account_for_login("Alice@B.Test", DOMAINS) == "Alice@b.test"


def test_login_without_at_gets_the_login_domain():
    assert account_for_login("alice", DOMAINS) == "alice@a.test"


def test_foreign_or_malformed_logins_are_not_ours():
    for login in ("alice@c.test", "", "  ", "al ice", "a\r\nX-Evil: 1", "alice@", "@a.test",
                  "alice@a..test", "alice;x@a.test"):
        assert account_for_login(login, DOMAINS) is None, login


def test_no_login_domain():
    assert account_for_login("alice", DomainsConfig(names=(), login_domain="")) is None


def test_normalize():
    assert normalize_account("Bob@Example.ORG.") == "Bob@example.org"
    assert normalize_account("no-at-sign") is None


@pytest.mark.parametrize("bad", ["alice\n@a.test", "alice@a.test\n", "ali\rce@a.test",
                                 "alice\x00@a.test", "alice@a.te\nst", "\x7f@a.test"])
def test_control_characters_are_refused(bad: str) -> None:
    from mailtalk.accounts import normalize_account
    assert normalize_account(bad) is None
