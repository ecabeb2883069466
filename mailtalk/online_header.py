"""The X-Sender-Online header: format and parse its value.

    X-Sender-Online: yes; account=alice@a.example; status=online;
     checked=2026-11-29T07:00:00Z; chat=<https://chat.a.example/c/TOKEN>

`yes` for online/away/busy, `no` for offline, `unknown` when no answer could be had;
`chat` is left out only with `unknown`. With `unknown`, `account` is left out too when
the mail carried no well-formed account. Every value is checked before it goes into a
header: ASCII only, no CR/LF, no `;`, `<`, `>` or white space inside a value, so a
crafted account or link can never add a header line or a parameter of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from mailtalk.constants import HDR_ONLINE
from mailtalk.timefmt import rfc3339

STATES = ("yes", "no", "unknown")
STATUSES = ("online", "away", "busy", "offline", "unknown")
_STATE_OF = {"online": "yes", "away": "yes", "busy": "yes", "offline": "no"}

# RFC 5322 recommends at most 78 characters per line; fold only at "; ".
FOLD_AT = 78
CHAT_URL_MAX = 900             # "chat=<...>" on a folded line stays below 998

# Printable ASCII without space and without the characters that delimit our grammar.
_SAFE_VALUE = re.compile(r"[!-~]+")
_UNSAFE = set(';<>"\\')
_URL = re.compile(r"https?://[!-~]+", re.IGNORECASE)
_CHECKED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@dataclass(frozen=True)
class SenderOnline:
    state: str                  # yes | no | unknown
    account: str | None         # None only with unknown
    status: str                 # online | away | busy | offline | unknown
    checked: datetime           # UTC
    chat: str | None            # None only with unknown


def state_for(status: str) -> str:
    """`yes` for online/away/busy, `no` for offline, else `unknown`."""
    return _STATE_OF.get(status, "unknown")


def safe_value(v: str) -> bool:
    return bool(_SAFE_VALUE.fullmatch(v)) and not (_UNSAFE & set(v))


def safe_url(url: str) -> bool:
    """An http(s) URL that can sit inside <...> in a header: printable ASCII, no <>",
    short enough that its line stays within RFC 5322's 998 characters."""
    return (len(url) <= CHAT_URL_MAX and bool(_URL.fullmatch(url))
            and not (set('<>"\\') & set(url)))


def unknown(account: str | None, checked: datetime) -> SenderOnline:
    if account is not None and not safe_value(account):
        account = None
    return SenderOnline("unknown", account, "unknown", checked, None)


def format_value(h: SenderOnline) -> str:
    """The header value on one line; raises ValueError on anything unsafe."""
    if h.state not in STATES or h.status not in STATUSES:
        raise ValueError(f"bad state/status {h.state!r}/{h.status!r}")
    parts = [h.state]
    if h.account is not None:
        if not safe_value(h.account):
            raise ValueError(f"unsafe account {h.account!r}")
        parts.append(f"account={h.account}")
    elif h.state != "unknown":
        raise ValueError("account is required unless unknown")
    parts.append(f"status={h.status}")
    parts.append(f"checked={rfc3339(h.checked)}")
    if h.chat is not None:
        if not safe_url(h.chat):
            raise ValueError(f"unsafe chat URL {h.chat!r}")
        parts.append(f"chat=<{h.chat}>")
    elif h.state != "unknown":
        raise ValueError("chat is required unless unknown")
    return "; ".join(parts)


def format_field(h: SenderOnline, eol: bytes = b"\r\n") -> bytes:
    """The whole header field, folded at "; " to stay within FOLD_AT where it can."""
    items = format_value(h).split("; ")
    lines: list[str] = []
    line = f"{HDR_ONLINE}: {items[0]}"
    for item in items[1:]:
        if len(line) + 2 + len(item) > FOLD_AT:
            lines.append(line + ";")
            line = " " + item
        else:
            line += "; " + item
    lines.append(line)
    return eol.join(x.encode("ascii") for x in lines) + eol


def parse_value(value: str) -> SenderOnline:
    """Parse a (possibly folded) header value; raises ValueError if it breaks the grammar."""
    text = re.sub(r"\r?\n[ \t]", " ", value).strip()
    items = [x.strip() for x in text.split(";")]
    state, params = items[0], {}
    if state not in STATES:
        raise ValueError(f"bad state {state!r}")
    for item in items[1:]:
        key, sep, val = item.partition("=")
        if not sep or key in params:
            raise ValueError(f"bad parameter {item!r}")
        params[key.strip().lower()] = val.strip()
    unknown_keys = set(params) - {"account", "status", "checked", "chat"}
    if unknown_keys:
        raise ValueError(f"unknown parameters {sorted(unknown_keys)}")
    status = params.get("status", "")
    if status not in STATUSES:
        raise ValueError(f"bad status {status!r}")
    if state != "unknown" and state_for(status) != state:
        raise ValueError(f"state {state!r} does not match status {status!r}")
    checked_s = params.get("checked", "")
    if not _CHECKED.fullmatch(checked_s):
        raise ValueError(f"bad checked {checked_s!r}")
    checked = datetime.strptime(checked_s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    chat = params.get("chat")
    if chat is not None:
        if not (chat.startswith("<") and chat.endswith(">") and safe_url(chat[1:-1])):
            raise ValueError(f"bad chat {chat!r}")
        chat = chat[1:-1]
    account = params.get("account")
    if state != "unknown" and (chat is None or account is None):
        raise ValueError("account and chat are required unless unknown")
    return SenderOnline(state, account, status, checked, chat)
