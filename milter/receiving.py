"""The receiving logic, free of any transport: the aiosmtpd filter and the milter wrap it.

For one message it: removes every incoming X-Sender-Online (any case, folded or not);
reads X-Messenger-Account and X-Mail-ID; with exactly one well-formed copy of each asks
the presence lookup (bounded by the lookup timeout; any failure is `unknown`); and builds
one X-Sender-Online field per recipient, carrying that recipient's own chat link.

It works on the raw bytes and never re-serializes with the `email` package: apart from
the header lines removed or prepended, every byte (8-bit, UTF-8, long lines, CRLF)
passes unchanged, so a DKIM signature over the original still verifies.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Protocol, Sequence

from mailtalk.accounts import normalize_account
from mailtalk.constants import HDR_ACCOUNT, HDR_MAIL_ID, HDR_ONLINE, LOOKUP_MAX_RECIPIENTS
from mailtalk.mailid import is_well_formed
from mailtalk_milter import online_header
from mailtalk_milter.online_header import SenderOnline

log = logging.getLogger("mailtalk.receiving")

Clock = Callable[[], datetime]
_ONLINE = HDR_ONLINE.lower().encode()
_RECEIVED_ID = re.compile(rb"\bid\s+([A-Za-z0-9]{6,32})\b")


class Lookup(Protocol):
    """What `presence_api.lookup_client.PresenceLookup` offers (never raises, bounded)."""

    async def lookup(self, account: str, mail_id: str, recipients: list[str],
                     *, queue_id: str = "-") -> Any: ...


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --- raw header handling -------------------------------------------------------------

def split_message(raw: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its continuation lines and line ends) and the rest.

    The rest starts with the empty line that ends the header, so
    `b"".join(fields) + rest == raw` always holds. A line that is neither a field start
    nor a continuation (e.g. an mbox `From ` line) is kept as a field of its own.
    """
    fields: list[bytes] = []
    pos = 0
    n = len(raw)
    while pos < n:
        end = raw.find(b"\n", pos)
        end = n if end < 0 else end + 1
        line = raw[pos:end]
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
        pos = end
    return fields, raw[pos:]


def field_name(f: bytes) -> bytes | None:
    """The lower-cased name of a field (`Name :` obsolete spacing allowed), or None."""
    name, sep, _ = f.partition(b":")
    if not sep:
        return None
    name = name.rstrip(b" \t")
    if not name or any(c <= 32 or c > 126 for c in name):
        return None
    return name.lower()


def field_value(f: bytes) -> str:
    """The unfolded value of a field, as text (non-ASCII becomes U+FFFD)."""
    value = f.partition(b":")[2]
    value = re.sub(rb"\r?\n(?=[ \t])", b"", value).rstrip(b"\r\n")
    return value.decode("ascii", errors="replace").strip()


def values_of(fields: Sequence[bytes], name: str) -> list[str]:
    key = name.lower().encode()
    return [field_value(f) for f in fields if field_name(f) == key]


def eol_of(raw: bytes) -> bytes:
    """The message's own line end (CRLF from SMTP; LF if its first line ends so)."""
    end = raw.find(b"\n")
    return b"\n" if end > 0 and raw[end - 1:end] != b"\r" else b"\r\n"


def strip_online(raw: bytes) -> tuple[list[bytes], bytes, int]:
    """(fields without any X-Sender-Online, rest, how many were removed)."""
    fields, rest = split_message(raw)
    kept = [f for f in fields if field_name(f) != _ONLINE]
    return kept, rest, len(fields) - len(kept)


def queue_id_of(fields: Sequence[bytes], xforward_ident: str | None = None) -> str:
    """Postfix's queue ID: XFORWARD IDENT, else the `id` of the topmost Received."""
    if xforward_ident and re.fullmatch(r"[A-Za-z0-9]{1,64}", xforward_ident):
        return xforward_ident
    for f in fields:
        if field_name(f) == b"received":
            m = _RECEIVED_ID.search(f)
            return m.group(1).decode() if m else "-"
    return "-"


# --- the claim and the lookup --------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """What the mail says about its sender: both set only when both are usable."""
    account: str | None
    mail_id: str | None
    problem: str | None          # why no lookup is made, for the log


def read_claim(fields: Sequence[bytes]) -> Claim:
    accounts = values_of(fields, HDR_ACCOUNT)
    mail_ids = values_of(fields, HDR_MAIL_ID)
    account = normalize_account(accounts[0]) if len(accounts) == 1 else None
    if len(accounts) != 1:
        return Claim(None, None, f"{len(accounts)} {HDR_ACCOUNT} headers")
    if account is None:
        return Claim(None, None, f"malformed {HDR_ACCOUNT}")
    if len(mail_ids) != 1:
        return Claim(account, None, f"{len(mail_ids)} {HDR_MAIL_ID} headers")
    if not is_well_formed(mail_ids[0]):
        return Claim(account, None, f"malformed {HDR_MAIL_ID}")
    return Claim(account, mail_ids[0], None)


def _link_for(links: dict[str, str], rcpt: str) -> str | None:
    link = links.get(rcpt)
    if link is None:
        lowered = {k.lower(): v for k, v in links.items()}
        link = lowered.get(rcpt.lower())
    return link


def headers_from_result(account: str, result: Any, recipients: Sequence[str],
                        now: datetime) -> dict[str, SenderOnline]:
    """One SenderOnline per recipient from a LookupResult; anything odd is `unknown`."""
    out: dict[str, SenderOnline] = {}
    status = getattr(result, "status", "unknown")
    state = getattr(result, "state", "unknown")
    checked = getattr(result, "checked", None)
    links = getattr(result, "links", None) or {}
    good = (state in ("yes", "no") and online_header.state_for(status) == state
            and isinstance(checked, datetime) and isinstance(links, dict))
    for rcpt in recipients:
        link = _link_for(links, rcpt) if good else None
        if good and isinstance(link, str) and online_header.safe_url(link):
            out[rcpt] = SenderOnline(state, account, status, checked, link)
        else:
            out[rcpt] = online_header.unknown(account, now)
    return out


async def _ask(lookup: Lookup, claim: Claim, recipients: list[str], timeout: float,
               now: datetime, qid: str) -> dict[str, SenderOnline]:
    assert claim.account is not None and claim.mail_id is not None
    try:
        async with asyncio.timeout(timeout):     # not wait_for: no task per mail
            result = await lookup.lookup(claim.account, claim.mail_id, recipients,
                                         queue_id=qid)
    except TimeoutError:
        log.warning("%s: lookup for %s timed out after %.1fs: unknown",
                    qid, claim.account, timeout)
        result = None
    except Exception as e:  # the lookup must never cost a mail: unknown, and go on
        log.warning("%s: lookup for %s failed (%s: %s): unknown",
                    qid, claim.account, type(e).__name__, e)
        result = None
    return headers_from_result(claim.account, result, recipients, now)


async def decide(claim: Claim, recipients: Sequence[str], lookup: Lookup | None,
                 timeout: float, now: datetime, qid: str) -> dict[str, SenderOnline]:
    """The X-Sender-Online of each recipient (lookups in chunks the API accepts).

    Why no lookup was made (`why_unknown`) is for the caller's log line."""
    rcpts = list(dict.fromkeys(recipients))
    if claim.problem is not None or lookup is None:
        return {r: online_header.unknown(claim.account, now) for r in rcpts}
    if not rcpts:
        return {}
    if len(rcpts) <= LOOKUP_MAX_RECIPIENTS:      # the usual case: one request, no gather
        return await _ask(lookup, claim, rcpts, timeout, now, qid)
    chunks = [rcpts[i:i + LOOKUP_MAX_RECIPIENTS]
              for i in range(0, len(rcpts), LOOKUP_MAX_RECIPIENTS)]
    results = await asyncio.gather(*(_ask(lookup, claim, c, timeout, now, qid) for c in chunks))
    out: dict[str, SenderOnline] = {}
    for r in results:
        out.update(r)
    return out


# --- the whole step ------------------------------------------------------------------

@dataclass
class Prepared:
    """A message with incoming X-Sender-Online removed and the header of each recipient."""
    qid: str
    fields: list[bytes]
    rest: bytes
    removed: int
    headers: dict[str, bytes] = field(default_factory=dict)   # recipient -> field bytes
    summary: str = ""        # "X-Sender-Online for <account>: <states> to N recipient(s)"

    def groups(self) -> list[tuple[bytes, list[str]]]:
        """Recipients grouped by identical header, in first-recipient order."""
        by_header: dict[bytes, list[str]] = {}
        for rcpt, hdr in self.headers.items():
            by_header.setdefault(hdr, []).append(rcpt)
        return list(by_header.items())

    def message_with(self, header: bytes) -> bytes:
        """The message as received, minus forged copies, with `header` prepended."""
        return header + b"".join(self.fields) + self.rest


def why_unknown(claim: Claim, lookup: Lookup | None) -> str:
    """The ` (why no lookup)` part of a log line; empty when a lookup was made."""
    if claim.problem is not None:
        return f" ({claim.problem})"
    return " (no lookup configured)" if lookup is None else ""


async def prepare(raw: bytes, recipients: Sequence[str], lookup: Lookup | None,
                  timeout: float, *, xforward_ident: str | None = None,
                  clock: Clock = utcnow) -> Prepared:
    fields, rest, removed = strip_online(raw)
    qid = queue_id_of(fields, xforward_ident)
    if removed:
        log.info("%s: removed %d incoming %s", qid, removed, HDR_ONLINE)
    claim = read_claim(fields)
    decided = await decide(claim, recipients, lookup, timeout, clock(), qid)
    eol = eol_of(raw)
    prepared = Prepared(qid, fields, rest, removed)
    for rcpt in recipients:
        prepared.headers[rcpt] = online_header.format_field(decided[rcpt], eol)
    states = sorted({h.state for h in decided.values()})
    # Logged by the caller with what became of the mail: one line per mail.
    prepared.summary = (f"{HDR_ONLINE} for {claim.account or '-'}: {'/'.join(states)}"
                        f"{why_unknown(claim, lookup)} to {len(decided)} recipient(s)")
    return prepared
