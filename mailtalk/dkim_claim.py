"""Is a mail's claim covered by a passing DKIM signature of the account's domain?

A genuine `X-Messenger-Account` and `X-Mail-ID` copied onto a forged mail would get a
genuine answer; binding the lookup to the Message-ID (`lookup`) stops a plain replay,
and a DKIM signature of the sender's domain over both headers stops the rest. The
receiving site's own verifier (OpenDKIM, rspamd: a milter on the smtpd that receives
from outside, before the queue) records its verdict in `Authentication-Results` with
its authserv-id; RFC 8601 has it remove copies with that id that arrive from outside.
This module reads that verdict; it does no cryptography of its own:

- an `Authentication-Results` field whose authserv-id is `[filter] authserv_id` has a
  `dkim=pass` result with `header.d=<account domain>` (or `header.i=...@<domain>`);
- a `DKIM-Signature` of that domain (matching `header.b` when the verifier gives it)
  lists both of our fields in its `h=` tag.

`[filter] dkim = "report"` logs the claims that are not covered and asks anyway (a
site sees which senders do not sign yet); `"require"` answers them `unknown`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mailtalk import headers
from mailtalk.constants import HDR_ACCOUNT, HDR_MAIL_ID

log = logging.getLogger("mailtalk.receiving")

_COMMENT = re.compile(r"\([^()]*\)")
_OURS = {HDR_ACCOUNT.lower(), HDR_MAIL_ID.lower()}


def _tags(value: str) -> dict[str, str]:
    """A DKIM-Signature's tag list (`d=...; h=...`), white space removed from values."""
    out: dict[str, str] = {}
    for item in value.split(";"):
        name, sep, val = item.partition("=")
        if sep:
            out.setdefault(name.strip().lower(), re.sub(r"\s+", "", val))
    return out


def _passes(value: str, authserv_id: str, domain: str) -> list[str]:
    """The `header.b` values (or "" when absent) of the `dkim=pass` results for `domain`
    in one Authentication-Results value, if its authserv-id is ours."""
    parts = [p.strip() for p in _COMMENT.sub(" ", value).split(";")]
    if not parts or parts[0].split()[:1] != [authserv_id]:
        return []
    found = []
    for resinfo in parts[1:]:
        words = resinfo.split()
        if not words or words[0].lower() != "dkim=pass":
            continue
        props = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        d = props.get("header.d", "").lower()
        i = props.get("header.i", "").lower()
        if d == domain or (not d and i.endswith("@" + domain)):
            found.append(props.get("header.b", ""))
    return found


def covered(fields: Sequence[bytes], domain: str, authserv_id: str) -> bool:
    """True when our verifier passed a DKIM signature of `domain` that signs both of
    our header fields."""
    domain = domain.lower()
    passes = [b for v in headers.values_of(fields, "Authentication-Results")
              for b in _passes(v, authserv_id, domain)]
    if not passes:
        return False
    for sig in headers.values_of(fields, "DKIM-Signature"):
        tags = _tags(sig)
        signed = {h.strip().lower() for h in tags.get("h", "").split(":")}
        if tags.get("d", "").lower() != domain or not _OURS <= signed:
            continue
        if any(b == "" or tags.get("b", "").startswith(b) for b in passes):
            return True
    return False


@dataclass(frozen=True)
class Policy:
    mode: str                  # "off" | "report" | "require" ([filter] dkim)
    authserv_id: str           # [filter] authserv_id: our verifier's name


def problem(fields: Sequence[bytes], account: str, policy: Policy | None,
            qid: str) -> str | None:
    """Why the claim does not count under the policy (None: it counts)."""
    if policy is None or policy.mode == "off":
        return None
    domain = account.rpartition("@")[2]
    if covered(fields, domain, policy.authserv_id):
        return None
    why = f"no passing DKIM signature of {domain} over our headers"
    if policy.mode == "require":
        return why
    log.info("%s: claim of %s: %s ([filter] dkim = report: asked all the same)",
             qid, account, why)
    return None
