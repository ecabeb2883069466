"""The claim bound to the mail by DKIM, end to end with a real signer and verifier.

a.test signs with a private OpenDKIM placed after mailtalk's sending milter on its
submission service, with deploy/dkim/opendkim.conf's lines (our two fields signed and
over-signed). b.test verifies with a private OpenDKIM on its smtpd (AuthservID
mx.b.test) and runs its filter with `[filter] dkim = "require"`; the verifier gets
a.test's public key from a file (support/opendkim.py says why).
"""

from __future__ import annotations

import re
from typing import Iterator

import pytest

from support.opendkim import OpenDkim, unavailable
from support.postfix import header_values
from support.postfix_mailbox import online
from support.smtp import make_message, smtp_send
from support.wait import wait_for
from support.two_sites import ALICE, B_MX, BOB, World, two_sites, world_dir


SIGNER, VERIFIER = "127.0.14.55", "127.0.14.56"
AUTHSERV = "mx.b.test"


@pytest.fixture(scope="module")
def site(request: pytest.FixtureRequest) -> Iterator[tuple[World, OpenDkim]]:
    if why := unavailable():
        pytest.skip(why)
    with world_dir(request) as base:
        signer = OpenDkim.signer(base, SIGNER, "a.test", "mt")
        verifier = OpenDkim.verifier(base, VERIFIER, AUTHSERV,
                                     {"mt._domainkey.a.test": signer.key_record})
        try:
            signer.start()
            verifier.start()
            with two_sites(base, a_signer=signer.milter, b_verifier=verifier.milter,
                           b_filter={"dkim": "require", "authserv_id": AUTHSERV}) as w:
                yield w, signer
        finally:
            for stop in (signer.stop, verifier.stop):
                stop()


@pytest.fixture(scope="module")
def world(site: tuple[World, OpenDkim]) -> World:
    return site[0]


def test_a_signed_claim_gets_its_link(world: World) -> None:
    w = world
    w.send([BOB], "Signed at a.test", "<dkim-genuine@a.test>")
    got = w.mail(BOB, "<dkim-genuine@a.test>")
    (sig,) = header_values(got, "DKIM-Signature")
    signed = [h.strip().lower() for h in re.search(r"\bh=([^;]+)", sig).group(1).split(":")]
    # Twice each: the fields as the signer saw them (our milter added them before it
    # ran) and once more over-signed (a copy added later breaks the signature).
    assert signed.count("x-messenger-account") == 2 and signed.count("x-mail-id") == 2, sig
    results = " ".join(header_values(got, "Authentication-Results"))
    assert AUTHSERV in results and "dkim=pass" in results and "header.d=a.test" in results
    ((state, params),) = online(got)
    assert state in ("yes", "no") and "chat" in params, params


def _claim_of(w: World) -> dict[str, str]:
    """alice's real claim, from the signed copy bob got (a replay may share its ID)."""
    (got,) = [m for m in w.b.delivered(BOB) if header_values(m, "Subject") == ["Signed at a.test"]]
    return {name: header_values(got, name)[0].strip()
            for name in ("X-Messenger-Account", "X-Mail-ID")}


@pytest.mark.parametrize("message_id", ["<dkim-genuine@a.test>", "<dkim-replay-new@a.test>"])
def test_a_copied_claim_on_an_unsigned_mail_gets_nothing(world: World, message_id: str) -> None:
    """Mallory copies alice's real claim (and, first, even her Message-ID, which the
    sender's record would match) onto a new mail straight to b.test's port 25. With
    the check off, the first would get a link; under `require` no header is added."""
    w = world
    claim = _claim_of(w)
    subject = f"replayed claim {message_id}"
    msg = make_message(from_=ALICE, to=BOB, subject=subject, message_id=message_id,
                       headers=claim, body="Not from alice.\r\n")
    smtp_send(B_MX, w.b.smtp_port, msg, sender=ALICE, rcpts=[BOB])
    got = _by_subject(w, subject)
    assert online(got) == [], online(got)
    w.b_filter.wait_log(rf"no X-Sender-Online \(no passing DKIM signature of a\.test", 15)


def test_a_signature_that_leaves_out_our_fields_does_not_count(
        site: tuple[World, OpenDkim]) -> None:
    """Signed by a.test's key (dkimpy, the signer's own key file), but not over
    X-Messenger-Account and X-Mail-ID: b.test's verifier says pass, the claim still
    gets nothing."""
    import dkim
    w, signer = site
    claim = _claim_of(w)
    subject = "signed without our fields"
    msg = make_message(from_=ALICE, to=BOB, subject=subject, headers=claim,
                       message_id="<dkim-partial@a.test>", body="Partly signed.\r\n")
    assert signer.key_file is not None
    sig = dkim.sign(msg, b"mt", b"a.test", signer.key_file.read_bytes(),
                    include_headers=[b"from", b"to", b"subject", b"message-id"])
    smtp_send(B_MX, w.b.smtp_port, sig + msg, sender=ALICE, rcpts=[BOB])
    got = _by_subject(w, subject)
    results = " ".join(header_values(got, "Authentication-Results"))
    assert "dkim=pass" in results, results
    assert online(got) == [], online(got)


def _by_subject(w: World, subject: str) -> bytes:
    def found() -> bytes | None:
        for m in w.b.delivered(BOB):
            if header_values(m, "Subject") == [subject]:
                return m
        w.b.flush()
        return None
    return wait_for(found, timeout=30, what=f"the mail {subject!r} at bob")
