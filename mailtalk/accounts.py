"""How a SASL login becomes a messenger account (`[domains]`).

A login with an '@' is the account itself; any other login gets `@login_domain`
(default: the first of `[domains] names`). Only accounts in one of this site's
domains are ours: for any other the milter adds no headers.
"""

from __future__ import annotations

import re

from mailtalk.config import DomainsConfig

# A conservative local part: what SASL logins and messenger accounts look like in
# practice. Anything else is refused rather than put into a header.
_LOCAL_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")


def normalize_account(account: str) -> str | None:
    """`Local@Domain.Example` -> `Local@domain.example`, or None if malformed (any
    control character included: an LF would split a header or a log line)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in account):
        return None
    local, sep, domain = account.strip(" ").rpartition("@")
    if not sep or not _LOCAL_RE.fullmatch(local) or not domain:
        return None
    domain = domain.rstrip(".").lower()
    if not re.fullmatch(r"[a-z0-9.-]{1,253}", domain) or ".." in domain:
        return None
    return f"{local}@{domain}"


def account_for_login(login: str, domains: DomainsConfig) -> str | None:
    """The messenger account of a SASL login, or None when it is not one of ours."""
    login = login.strip()
    if not login:
        return None
    if "@" not in login:
        if not domains.login_domain:
            return None
        login = f"{login}@{domains.login_domain}"
    account = normalize_account(login)
    if account is None or account.rpartition("@")[2] not in domains.names:
        return None
    return account


def account_domain(account: str) -> str:
    return account.rpartition("@")[2].lower()
