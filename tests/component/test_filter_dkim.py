"""Bytes pass unchanged: a DKIM signature (dkimpy, simple/simple: byte-exact) over an
8-bit UTF-8 message with long lines and an SMTPUTF8 address still verifies after the
filter with the notice off, and the header we add is not among the signed ones. With
the notice on, the body changes (a downstream verifier sees a body hash mismatch): the
site verifies before the filter, and its Authentication-Results pass unchanged."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
from pathlib import Path

import dkim

from mailtalk import headers
from support.smtp_client import send
from support.fake_lookup import CLAIM, FakeLookup
from support.filter_harness import start_filter

DOMAIN, SELECTOR = b"a.example", b"sel"


def make_key(tmp: Path) -> tuple[bytes, bytes]:
    """An RSA key pair from the real openssl (dkimpy has no key generator of its own)."""
    key = tmp / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True,
                   capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return key.read_bytes(), b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def signed_message(private: bytes) -> bytes:
    long_line = ("Lorem ipsum dolor sit amet, ü " * 33).encode()[:990]   # near RFC's 998
    body = ("Grüße aus Köln. 日本語のテキスト。\r\n" * 3).encode() + long_line + b"\r\n" \
        + b".leading dot\r\n" + b"trailing space   \r\n" + b"\r\n\r\n"
    head = ("From: Ålice <ålice@a.example>\r\n"
            "To: bob@b.example\r\n"
            "Subject: Grüße\r\n"
            "Date: Sun, 29 Nov 2026 07:00:00 +0000\r\n"
            "Message-ID: <dkim-test@a.example>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n").encode() \
        + "".join(c + "\r\n" for c in CLAIM).encode() \
        + b"X-Sender-Online: yes; account=forged@e.example; status=online;\r\n" \
          b" checked=2026-01-01T00:00:00Z; chat=<https://evil.example/c/x>\r\n"
    raw = head + b"\r\n" + body
    sig = dkim.sign(raw, SELECTOR, DOMAIN, private, canonicalize=(b"simple", b"simple"),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id",
                                     b"mime-version", b"content-type",
                                     b"content-transfer-encoding"])
    return sig + raw


async def through_filter(raw: bytes, extra: str = "") -> bytes:
    harness, things = await start_filter(FakeLookup("online"), extra=extra)
    try:
        r = await asyncio.to_thread(
            send, "127.0.13.2", harness.running.port, "ålice@a.example", ["bob@b.example"], raw,
            mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        assert r.data[0] == 250
    finally:
        await things[0].close()
        things[1].close()
    return harness.sink.got[0].content


async def test_dkim_signature_still_verifies_after_the_filter_without_notice(
        tmp_path: Path) -> None:
    private, txt = await asyncio.to_thread(make_key, tmp_path)
    raw = signed_message(private)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return txt if name == b"sel._domainkey.a.example." else b""

    assert dkim.verify(raw, dnsfunc=dns)
    out = await through_filter(raw, "notice = false")
    assert out != raw and b"forged" not in out and b"chat=<https://chat.a.example/c/bob>" in out
    assert dkim.verify(out, dnsfunc=dns)
    sig_fields = [f for f in headers.split_message(out)[0]
                  if headers.field_name(f) == b"dkim-signature"]
    h_tag = re.search(rb"h=([^;]+)", re.sub(rb"\s", b"", sig_fields[0])).group(1).lower()
    assert b"x-sender-online" not in h_tag.split(b":")


async def test_with_the_notice_authentication_results_pass_and_only_the_text_changes(
        tmp_path: Path) -> None:
    private, txt = await asyncio.to_thread(make_key, tmp_path)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return txt if name == b"sel._domainkey.a.example." else b""

    signed = signed_message(private)
    assert dkim.verify(signed, dnsfunc=dns)          # the site's verifier, before the filter
    results = b"Authentication-Results: mx.b.example; dkim=pass header.d=a.example\r\n"
    raw = results + signed
    out = await through_filter(raw)
    forged = (b"X-Sender-Online: yes; account=forged@e.example; status=online;\r\n"
              b" checked=2026-01-01T00:00:00Z; chat=<https://evil.example/c/x>\r\n")
    expected = raw.replace(forged, b"")
    assert out.startswith(b"X-Sender-Online: yes;") and forged not in out
    after = out[out.index(results):]
    split = expected.index(b"\r\n\r\n") + 4
    assert after[:split] == expected[:split]       # every field but ours, byte for byte
    assert after[split:].endswith(expected[split:])   # the original text follows the notice
    notice = after[split:-len(expected[split:])]
    assert notice.startswith(b"mailtalk: ")
    assert b"Chat about this mail: https://chat.a.example/c/bob\r\n" in notice
    assert not dkim.verify(out, dnsfunc=dns)         # what a verifier after us would see
