"""Claims bound to their mail by DKIM (mailtalk/dkim_claim.py): read from our own
verifier's Authentication-Results and the DKIM-Signature's h= tag; and the receiving
decision answers `unknown` without asking when `[filter] dkim = "require"` fails."""

from __future__ import annotations

import pytest

from mailtalk import dkim_claim, headers, receiving
from support.fake_lookup import CLAIM, FakeLookup, msg

SIG = ("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=a.example; s=sel;\r\n"
       " h=from:to:subject:x-messenger-account:x-mail-id; bh=AAAA; b=Zm9vYmFy\r\n QUJD")
PASS = "Authentication-Results: mx.b.example; dkim=pass (2048-bit key) header.d=a.example header.b=Zm9vYmFy"
POLICY = dkim_claim.Policy("require", "mx.b.example")


def fields(*lines: str) -> list[bytes]:
    return headers.split_message(msg(*lines))[0]


@pytest.mark.parametrize("lines, ok", [
    ((PASS, SIG), True),
    ((PASS.replace(" header.b=Zm9vYmFy", ""), SIG), True),             # no header.b: any signature of d=
    (("Authentication-Results: mx.b.example; dkim=pass header.i=@a.example", SIG), True),
    ((PASS.replace("mx.b.example", "mx.evil.example"), SIG), False),    # not our verifier
    ((PASS.replace("dkim=pass", "dkim=fail"), SIG), False),
    ((PASS.replace("header.d=a.example", "header.d=evil.example"), SIG), False),
    ((PASS, SIG.replace(":x-mail-id", "")), False),                      # X-Mail-ID not signed
    ((PASS, SIG.replace("d=a.example", "d=evil.example")), False),       # another domain's signature
    ((PASS.replace("header.b=Zm9vYmFy", "header.b=b3RoZXI"), SIG), False),   # another signature
    ((SIG,), False),                                                    # no verdict at all
    ((PASS,), False),                                                   # no signature
])
def test_covered(lines: tuple[str, ...], ok: bool) -> None:
    assert dkim_claim.covered(fields(*lines), "A.Example", "mx.b.example") is ok


async def test_require_adds_nothing_without_asking_and_report_asks() -> None:
    forged = msg(*CLAIM, "Subject: a copied claim")          # no signature, no verdict
    lookup = FakeLookup("online")
    p = await receiving.prepare(forged, ["bob@b.example"], lookup, dkim=POLICY)
    assert lookup.calls == [] and p.headers["bob@b.example"] == b""     # no usable claim
    assert "no passing DKIM signature of a.example" in p.summary
    p = await receiving.prepare(forged, ["bob@b.example"], lookup,
                                dkim=dkim_claim.Policy("report", "mx.b.example"))
    assert len(lookup.calls) == 1 and b"X-Sender-Online: yes" in p.headers["bob@b.example"]
    signed = msg(PASS, SIG, *CLAIM)
    p = await receiving.prepare(signed, ["bob@b.example"], lookup, dkim=POLICY)
    assert len(lookup.calls) == 2 and b"X-Sender-Online: yes" in p.headers["bob@b.example"]
