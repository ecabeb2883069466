"""The JSON API: POST /api/v1/mails (this site's milter) and POST /api/v1/lookup
(public).

Lookup answers must not tell a valid Mail-ID from a wrong, forged or expired one or
from an unknown account, by content or by time: every path does one HMAC verify
and one memo look-up (`LookupMemo.context`, the same dict look-ups whatever the
account) before deciding, and all refusals share one answer. Only a verified Mail-ID
of an existing account goes further. A lookup writes nothing: links are
self-verifying (links.py) and stored only when opened.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mailtalk import metrics
from mailtalk.accounts import account_domain, normalize_account
from mailtalk.constants import API_LOOKUP, API_MAILS, LOOKUP_MAX_RECIPIENTS
from mailtalk.mailid import is_well_formed
from mailtalk.timefmt import rfc3339
from presence_api.service import client_ip, service
from presence_api.store import Mail

log = logging.getLogger("mailtalk.presence.api")

# Hard caps on a record's fields (the milter trims the body to body_text_limit first).
MAX_SUBJECT = 2000
MAX_HEADER_FIELD = 1000
MAX_BODY_TEXT = 512 * 1024
MAX_RECORD_RECIPIENTS = 1000
MAX_NAMES, MAX_NAME = 200, 200      # display names per record, characters per name


def _answer(obj: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj).encode(),
                        status=status, content_type="application/json")


def _bad(reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=400)


async def _json(request: web.Request) -> dict[str, Any] | None:
    return _parse(await request.read())


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:   # JSON is UTF-8 (RFC 8259): bytes straight to the parser, no charset lookup
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):   # deep nesting: a 400 too
        return None
    return body if isinstance(body, dict) else None


def norm_account(s: str) -> str | None:
    """Accounts are case-insensitive here: one key per mailbox."""
    a = normalize_account(s)
    return a.lower() if a else None


def norm_recipient(s: Any) -> str | None:
    """Recipients keep their local part; the domain is lowercased."""
    return normalize_account(s) if isinstance(s, str) and len(s) <= 320 else None


# --- POST /api/v1/mails

def _str_field(body: dict[str, Any], key: str, limit: int, required: bool = True) -> str:
    v = body.get(key, None if required else "")
    if not isinstance(v, str):
        raise ValueError(f"{key}: expected a string")
    if len(v) > limit:
        raise ValueError(f"{key}: longer than {limit} characters")
    return v


def _record(body: dict[str, Any], now: float) -> Mail:
    mail_id = _str_field(body, "mail_id", 64)
    account = norm_account(_str_field(body, "account", 320))
    if not account:
        raise ValueError("account: not an address")
    rcpts = body.get("recipients")
    if not isinstance(rcpts, list) or len(rcpts) > MAX_RECORD_RECIPIENTS:
        raise ValueError(f"recipients: expected a list of at most {MAX_RECORD_RECIPIENTS}")
    recipients = []
    for r in rcpts:
        n = norm_recipient(r)
        if n is None:
            raise ValueError(f"recipients: not an address: {str(r)[:80]!r}")
        if n not in recipients:
            recipients.append(n)
    return Mail(mail_id=mail_id, account=account, recorded=True,
                message_id=_str_field(body, "message_id", MAX_HEADER_FIELD, False),
                subject=_str_field(body, "subject", MAX_SUBJECT, False),
                date=_str_field(body, "date", MAX_HEADER_FIELD, False),
                recipients=tuple(recipients),
                body_text=_str_field(body, "body_text", MAX_BODY_TEXT, False),
                queue_id=_str_field(body, "queue_id", 64, False), created_at=now,
                names=_names(body.get("names")))


def _names(value: Any) -> dict[str, str]:
    """The record's display names; what does not fit is left out, never a refusal
    (an older milter sends none)."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, str] = {}
    for addr, name in list(value.items())[:MAX_NAMES]:
        if (isinstance(addr, str) and isinstance(name, str) and len(addr) <= 320
                and 0 < len(name) <= MAX_NAME and name.isprintable()):
            out[addr.lower()] = name
    return out


async def post_mails(request: web.Request) -> web.Response:
    svc = service(request)
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                             svc.outbox_token.encode()):
        return web.json_response({"error": "unauthorized"}, status=401,
                                 headers={"WWW-Authenticate": "Bearer"})
    body = await _json(request)
    if body is None:
        return _bad("expected a JSON object")
    try:
        mail = _record(body, svc.clock())
    except ValueError as e:
        return _bad(str(e))
    queue_id = mail.queue_id or "-"
    if account_domain(mail.account) not in svc.cfg.domains.names:
        log.warning("%s: record refused: account %s is not in [domains] names",
                    queue_id, mail.account)
        return _bad("account: not in one of this site's domains")
    if not svc.mail_ids.verify(mail.account, mail.mail_id):
        log.warning("%s: record refused: Mail-ID %s not valid for %s",
                    queue_id, mail.mail_id, mail.account)
        return _bad("mail_id: not a valid Mail-ID of this account")
    existing = await svc.store.get_mail(mail.mail_id)
    if existing is not None and existing.account != mail.account:
        return _bad("mail_id: belongs to another account")
    stored = await svc.lookups.put_mail(mail)
    if stored and svc.chat.publish is not None:     # the other processes' lookups
        await svc.chat.publish("record", mail_id=mail.mail_id, account=mail.account,
                               allowed=[r.lower() for r in mail.recipients],
                               message_id=mail.message_id)
    if stored and existing is not None:      # a link page opened before it came
        await svc.chat.mail_arrived(mail)
    log.info("%s: mail %s of %s %s (%d recipients)", queue_id, mail.mail_id, mail.account,
             "recorded" if stored else "already recorded", len(mail.recipients))
    return web.json_response({"mail_id": mail.mail_id, "stored": stored},
                             status=201 if stored else 200)


# --- POST /api/v1/lookup

def _lookup_error(body: Any) -> str | None:
    """What is malformed in one lookup request (a client's bug: 400), or None."""
    if not isinstance(body, dict):
        return "expected a JSON object"
    account_in, mail_id, rcpts = body.get("account"), body.get("mail_id"), body.get("recipients")
    if not isinstance(account_in, str) or not isinstance(mail_id, str) or len(mail_id) > 64:
        return "account and mail_id: expected strings"
    if not isinstance(rcpts, list) or len(rcpts) > LOOKUP_MAX_RECIPIENTS:
        return f"recipients: expected a list of at most {LOOKUP_MAX_RECIPIENTS}"
    if not isinstance(body.get("message_id", ""), str):
        return "message_id: expected a string"
    return None


async def _lookup_answer(svc: Any, body: dict[str, Any], now: float, ip: str,
                         signer: Callable[[], Awaitable[str | None]]
                         ) -> tuple[dict[str, Any], bool]:
    """(the answer to one well-formed lookup request (see _lookup_error), whether it
    is a refusal). `signer` gives the domain that signed the request (None: unsigned
    or not valid): a link goes only to a recipient of that domain. A status of
    `unknown` with links is no refusal: the mail is known, its sender's presence is
    not (PresenceHub.answer_status)."""
    account_in, mail_id, rcpts = body["account"], body["mail_id"], body["recipients"]
    account = norm_account(account_in) if len(account_in) <= 320 else None
    # The same work on every path: one HMAC, one memo look-up (memory only).
    valid = svc.mail_ids.verify(account or "", mail_id)
    ctx = svc.lookups.context(account or "", mail_id if is_well_formed(mail_id) else "")
    mail = ctx.mail
    if (not valid or account is None or ctx.mode is None
            or account_domain(account) not in svc.cfg.domains.names
            or (mail is not None and mail.account != account)):
        metrics.LOOKUP_REFUSALS.labels("invalid_claim").inc()
        return {"status": "unknown", "checked": rfc3339(now), "links": {}}, True

    status = svc.presence.answer_status(account, ctx.mode)
    # The record may not be here yet (the outbox is asynchronous): the verified Mail-ID
    # proves the mail, so every recipient asked gets a link. Once the record is known
    # (in memory, or read once: `LookupMemo.mail_state`), only its recipients do. Keys are the
    # recipients exactly as asked (the hook matches on them); each link names the
    # recipient with its domain lowercased, so Bob@B.example and Bob@b.example get the
    # same link. Nothing is written: the link is an HMAC, stored only when opened.
    if mail is None:
        mail = await svc.lookups.mail_state(mail_id, account)
    if mail.account != account or not mail.matches(body.get("message_id", "")):
        # Another account's mail, or a genuine claim copied onto another mail.
        metrics.LOOKUP_REFUSALS.labels("other_mail").inc()
        return {"status": "unknown", "checked": rfc3339(now), "links": {}}, True
    domain = await signer()
    links: dict[str, str] = {}
    made: dict[str, str | None] = {}         # recipient as bound -> URL
    for r in rcpts:
        rcpt = norm_recipient(r)
        if (rcpt is None or r in links or not mail.allows(rcpt)
                or domain is None or account_domain(rcpt).lower() != domain):
            continue
        if rcpt not in made:             # None: too long for a link (links.py)
            made[rcpt] = svc.links.url(mail_id, account, rcpt)
        if (url := made[rcpt]) is not None:
            links[r] = url
    if log.isEnabledFor(logging.DEBUG):
        log.debug("lookup of %s for mail %s from %s: %s, %d links", account, mail_id,
                  ip, status, len(links))
    return {"status": status, "checked": rfc3339(now), "links": links}, False


def _too_many() -> web.Response:
    return web.json_response({"error": "too many lookups"}, status=429,
                             headers={"Retry-After": "60"})


async def post_lookup(request: web.Request) -> web.Response:
    """The limit counts refusals only: a valid Mail-ID is an unguessable capability,
    and a busy peer site asking for its own recipients is never held back; a guesser
    is (`[presence] lookups_per_minute_per_client` refused lookups a minute)."""
    svc = service(request)
    ip = client_ip(request)
    if svc.lookup_limiter.blocked(ip):
        svc.degraded["rate_limited"] += 1
        metrics.RATE_LIMITED.labels("lookup").inc()
        log.info("lookup from %s: rate limited (too many refused lookups)", ip)
        return _too_many()
    raw = await request.read()
    body = _parse(raw)
    if (error := _lookup_error(body)) is not None:
        svc.lookup_limiter.hit(ip)
        metrics.LOOKUP_REFUSALS.labels("malformed").inc()
        return _bad(error)
    assert body is not None

    async def signer() -> str | None:
        return await svc.signatures.signer(request.headers, "POST", svc.lookup_path, raw)
    with metrics.LOOKUP_SECONDS.time():
        answer, refused = await _lookup_answer(svc, body, svc.clock(), ip, signer)
    metrics.LOOKUPS.labels(metrics.answer_of(answer["status"])).inc()
    if refused:
        svc.lookup_limiter.hit(ip)
    return _answer(answer)


def routes() -> list[web.AbstractRouteDef]:
    return [web.post(API_MAILS, post_mails), web.post(API_LOOKUP, post_lookup)]
