"""Mail as delivered by a private Postfix: waiting for one by Message-ID (flushing the
queues on the way), and reading its X-Sender-Online headers back."""

from __future__ import annotations

import re

from support.postfix import PostfixInstance, header_values
from support.wait import wait_for


def online(raw: bytes) -> list[tuple[str, dict[str, str]]]:
    """Every X-Sender-Online of a delivered mail as (state, {param: value})."""
    out = []
    for value in header_values(raw, "X-Sender-Online"):
        value = re.sub(r"\s*\n\s*", " ", value).strip()
        state, *params = [p.strip() for p in value.split(";")]
        out.append((state, dict(p.split("=", 1) for p in params if "=" in p)))
    return out


def wait_mail(mta: PostfixInstance, rcpt: str, message_id: str, timeout: float = 30.0,
              also_flush: tuple[PostfixInstance, ...] = ()) -> list[bytes]:
    """Wait until the mail with this Message-ID reached `rcpt`; every copy of it."""
    def got() -> list[bytes] | None:
        found = [m for m in mta.delivered(rcpt) if header_values(m, "Message-ID") == [message_id]]
        if found:
            return found
        for inst in (*also_flush, mta):
            if inst.queue():
                inst.flush()
        return None
    try:
        return wait_for(got, timeout=timeout, interval=0.1,
                        what=f"{message_id} for {rcpt} at Postfix {mta.name}")
    except AssertionError as e:
        tails = "\n".join(f"--- {i.name}:\n{i.maillog_tail(15)}" for i in (*also_flush, mta))
        raise AssertionError(f"{e}\n{tails}") from None
