"""The receiving decision, free of any transport: the content filter and the milter
form wrap it.

For one message it: removes every incoming X-Sender-Online (any case, folded or not);
reads X-Messenger-Account and X-Mail-ID (the one check of both: `read_claim`); with
exactly one well-formed copy of each asks the presence lookup once for all distinct
recipients (the lookup bounds itself by `[filter] lookup_timeout` and never raises);
and builds one X-Sender-Online field per recipient, carrying that recipient's own link.
With the notice on, each copy that has a link also gets the visible notice with that
link in its text part(s) (`mailtalk.notice`); a mail that must not be touched gets the
header only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from mailtalk import dkim_claim, headers, metrics, notice, online_header
from mailtalk.accounts import normalize_account
from mailtalk.constants import HDR_ACCOUNT, HDR_MAIL_ID, HDR_ONLINE
from mailtalk.lookup import LookupResult
from mailtalk.mailid import is_well_formed
from mailtalk.online_header import SenderOnline
from mailtalk.timefmt import utcnow

log = logging.getLogger("mailtalk.receiving")

Clock = Callable[[], datetime]


class Lookup(Protocol):
    """What `mailtalk.lookup.PresenceLookup` offers: bounded in time, never raises."""

    async def lookup(self, account: str, mail_id: str, recipients: list[str],
                     *, message_id: str = "", queue_id: str = "-") -> LookupResult: ...


@dataclass(frozen=True)
class Claim:
    """What the mail says about its sender: both set only when both are usable."""
    account: str | None
    mail_id: str | None
    problem: str | None          # why no lookup is made, for the log
    message_id: str = ""         # the mail's Message-ID: the sender's record must match


def read_claim(fields: Sequence[bytes]) -> Claim:
    accounts = headers.values_of(fields, HDR_ACCOUNT)
    mail_ids = headers.values_of(fields, HDR_MAIL_ID)
    message_ids = headers.values_of(fields, "Message-ID")
    if len(accounts) != 1:
        return Claim(None, None, f"{len(accounts)} {HDR_ACCOUNT} headers")
    account = normalize_account(accounts[0])
    if account is None:
        return Claim(None, None, f"malformed {HDR_ACCOUNT}")
    if len(mail_ids) != 1:
        return Claim(account, None, f"{len(mail_ids)} {HDR_MAIL_ID} headers")
    if not is_well_formed(mail_ids[0]):
        return Claim(account, None, f"malformed {HDR_MAIL_ID}")
    return Claim(account, mail_ids[0], None, message_ids[0] if len(message_ids) == 1 else "")


def _link_for(links: dict[str, str], rcpt: str) -> str | None:
    link = links.get(rcpt)
    if link is None:            # the service may give the domain in another case
        link = {k.lower(): v for k, v in links.items()}.get(rcpt.lower())
    return link


def headers_for(account: str, result: LookupResult, recipients: Sequence[str]
                ) -> dict[str, SenderOnline]:
    """One SenderOnline per recipient: `yes`/`no` with its link, else `unknown` (with
    its link where the service gave one: a known mail whose sender's presence it
    could not tell).

    The lookup checked every link (grammar and origin); a recipient it gave none gets
    `unknown`, as the header's grammar has no `yes`/`no` without `chat`."""
    out: dict[str, SenderOnline] = {}
    for rcpt in recipients:
        link = _link_for(result.links, rcpt)
        if link is not None:
            out[rcpt] = SenderOnline(result.state, account, result.status, result.checked, link)
        else:
            out[rcpt] = online_header.unknown(account, result.checked)
    return out


async def decide(claim: Claim, recipients: Sequence[str], lookup: Lookup | None,
                 now: datetime, qid: str) -> tuple[dict[str, SenderOnline], str]:
    """(the X-Sender-Online of each distinct recipient, why it is `unknown` or "");
    counted in mailtalk.metrics."""
    decided, why = await _decide(claim, recipients, lookup, now, qid)
    metrics.FILTER_MAILS.inc()
    reason = metrics.reason_class(why)
    for header in decided.values():
        answer = "none" if header is NO_HEADER else header.state
        metrics.FILTER_ANSWERS.labels(answer, reason).inc()
    return decided, why


async def _decide(claim: Claim, recipients: Sequence[str], lookup: Lookup | None,
                  now: datetime, qid: str) -> tuple[dict[str, SenderOnline], str]:
    rcpts = list(dict.fromkeys(recipients))
    if claim.problem is not None:     # no usable claim: no header at all (NO_HEADER)
        return {r: NO_HEADER for r in rcpts}, claim.problem
    if lookup is None or not rcpts:
        why = "no lookup configured" if lookup is None else ""
        return {r: online_header.unknown(claim.account, now) for r in rcpts}, why
    assert claim.account is not None and claim.mail_id is not None
    try:
        with metrics.FILTER_LOOKUP_SECONDS.time():
            result = await lookup.lookup(claim.account, claim.mail_id, rcpts,
                                         message_id=claim.message_id, queue_id=qid)
    except Exception:     # a bug: the lookup's contract is never to raise
        log.exception("%s: lookup for %s failed: unknown", qid, claim.account)
        result = LookupResult("unknown", now, {}, "lookup failed")
    return headers_for(claim.account, result, rcpts), result.reason


# A mail without a usable claim (no or several X-Messenger-Account or X-Mail-ID, one
# malformed, or not covered by DKIM where that is required) gets no X-Sender-Online:
# the header always names an account, and "unknown" on every outside mail would be
# noise. Forged copies are removed all the same.
NO_HEADER = SenderOnline("unknown", None, "unknown", datetime(1970, 1, 1), None)


def field_of(h: SenderOnline, eol: bytes = b"\r\n") -> bytes:
    """The X-Sender-Online field to add for `h`; b"" for none."""
    return b"" if h.account is None else online_header.format_field(h, eol)


@dataclass
class Prepared:
    """A message with incoming X-Sender-Online removed and the header of each recipient."""
    qid: str
    fields: list[bytes]
    rest: bytes
    removed: int
    headers: dict[str, bytes] = field(default_factory=dict)   # recipient -> field bytes
    online: dict[bytes, SenderOnline] = field(default_factory=dict)   # field -> its value
    notices: notice.NoticeTemplates | None = None    # None: no visible notice
    sender_name: str | None = None      # From:'s display name, read once for all copies
    summary: str = ""        # "X-Sender-Online for <account>: <states> to N recipient(s)"

    def groups(self) -> list[tuple[bytes, list[str]]]:
        """Recipients grouped by identical header, in first-recipient order."""
        by_header: dict[bytes, list[str]] = {}
        for rcpt, hdr in self.headers.items():
            by_header.setdefault(hdr, []).append(rcpt)
        return list(by_header.items())

    def message_with(self, header: bytes) -> bytes:
        """The message as received, minus forged copies, with `header` prepended and,
        where the header carries a link and the notice is on, the notice in its text."""
        message = b"".join(self.fields) + self.rest
        h = self.online.get(header)
        if self.notices is not None and h is not None and h.chat is not None:
            message = self._with_notice(message, h) or message
        return header + message

    def _with_notice(self, message: bytes, h: SenderOnline) -> bytes | None:
        assert h.account is not None and h.chat is not None
        try:
            if self.sender_name is None:
                self.sender_name = notice.display_name(message)
            return notice.add_notice(message, notice.Notice(
                h.account, self.sender_name, h.status, h.chat, self.notices))
        except Exception:     # never cost a mail: the header alone, as for signed mail
            log.exception("%s: the notice could not be added: header only", self.qid)
            return None


async def prepare(raw: bytes, recipients: Sequence[str], lookup: Lookup | None, *,
                  notices: notice.NoticeTemplates | None = None,
                  dkim: dkim_claim.Policy | None = None,
                  xforward_ident: str | None = None, clock: Clock = utcnow) -> Prepared:
    """`notices`: the wording of the visible notice; None: no notice, header only.
    `dkim`: whether the claim must be covered by a passing DKIM signature."""
    fields, rest = headers.split_message(raw)
    fields, removed = headers.without(fields, HDR_ONLINE)
    qid = headers.queue_id_of(fields, xforward_ident)
    if removed:
        log.info("%s: removed %d incoming %s", qid, removed, HDR_ONLINE)
    claim = read_claim(fields)
    if claim.problem is None and claim.account is not None:
        unsigned = dkim_claim.problem(fields, claim.account, dkim, qid)
        if unsigned is not None:
            claim = Claim(claim.account, None, unsigned)
    decided, why = await decide(claim, recipients, lookup, clock(), qid)
    eol = headers.eol_of(raw)
    prepared = Prepared(qid, fields, rest, removed, notices=notices)
    for rcpt in recipients:
        field_bytes = field_of(decided[rcpt], eol)
        prepared.headers[rcpt] = field_bytes
        prepared.online[field_bytes] = decided[rcpt]
    states = sorted({h.state for h in decided.values()})
    # Logged by the caller with what became of the mail: one line per mail.
    if claim.problem is not None:
        prepared.summary = f"no {HDR_ONLINE} ({why}) for {len(decided)} recipient(s)"
    else:
        prepared.summary = (f"{HDR_ONLINE} for {claim.account}: {'/'.join(states)}"
                            f"{f' ({why})' if why else ''} to {len(decided)} recipient(s)")
    return prepared
