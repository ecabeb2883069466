"""add_notice leaves alone what it must not or cannot change safely: signed or encrypted
mail anywhere in the tree, inline PGP, and MIME that parsers could read in two ways."""

from __future__ import annotations

import email.policy
import shutil
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest

from support.chat_links import chat_link
from mailtalk.notice import Notice, add_notice


LINK = chat_link()
NOTICE = Notice("alice@a.example", "Alice Example", "online", LINK)


def message(text: str, cte: str | None = None) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "alice@a.example", "bob@b.example", "x"
    m.set_content(text, cte=cte)
    return m


SIGNED = (b"Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; "
          b"protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"S\"\r\n\r\n"
          b"--S\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--S\r\n"
          b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
          b"Content-Transfer-Encoding: base64\r\n\r\nMIIB\r\n--S--\r\n")
ENCRYPTED = (b"Subject: e\r\nContent-Type: multipart/encrypted; protocol=\"application/"
             b"pgp-encrypted\"; boundary=E\r\n\r\n--E\r\nContent-Type: application/pgp-encrypted"
             b"\r\n\r\nVersion: 1\r\n--E\r\nContent-Type: application/octet-stream\r\n\r\n"
             b"-----BEGIN PGP MESSAGE-----\r\nhQEM\r\n-----END PGP MESSAGE-----\r\n--E--\r\n")
PKCS7 = (b"Subject: p\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data; "
         b"name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\nMIIB\r\n")
INLINE_PGP = (b"Subject: i\r\nContent-Type: text/plain\r\n\r\n-----BEGIN PGP SIGNED MESSAGE-----"
              b"\r\nHash: SHA256\r\n\r\nhello\r\n-----BEGIN PGP SIGNATURE-----\r\nx\r\n"
              b"-----END PGP SIGNATURE-----\r\n")
NESTED_SIGNED = (b"Subject: n\r\nContent-Type: multipart/mixed; boundary=M\r\n\r\n--M\r\n"
                 b"Content-Type: text/plain\r\n\r\nintro\r\n--M\r\n"
                 + SIGNED.split(b"\r\n", 2)[2].replace(b"MIME-Version: 1.0\r\n", b"")
                 + b"\r\n--M--\r\n")


@pytest.mark.parametrize("raw", [SIGNED, ENCRYPTED, PKCS7, INLINE_PGP, NESTED_SIGNED],
                         ids=["signed", "encrypted", "pkcs7-mime", "inline-pgp", "nested"])
def test_signed_or_encrypted_is_never_touched(raw: bytes) -> None:
    assert add_notice(raw, NOTICE) is None


def test_inline_pgp_in_base64_is_found_once_decoded() -> None:
    m = message("-----BEGIN PGP MESSAGE-----\nhQ\n-----END PGP MESSAGE-----\n", "base64")
    assert add_notice(m.as_bytes(policy=email.policy.SMTP), NOTICE) is None


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_openssl_smime_signed_is_none(tmp_path: Path) -> None:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=alice"],
                   check=True, capture_output=True)
    m = message("signed body\n")
    (tmp_path / "in.eml").write_bytes(m.as_bytes(policy=email.policy.SMTP))
    signed = subprocess.run(["openssl", "smime", "-sign", "-in", str(tmp_path / "in.eml"),
                             "-signer", str(cert), "-inkey", str(key)],
                            check=True, capture_output=True).stdout
    assert b"multipart/signed" in signed
    assert add_notice(signed, NOTICE) is None


@pytest.mark.parametrize("raw", [
    b"Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\ntext\r\n",
    b"Subject: x\r\nContent-Type: multipart/mixed\r\n\r\n--b\r\n\r\ntext\r\n--b--\r\n",
    b"Subject: x\r\nContent-Type: multipart/mixed; boundary=\"a b \"\r\n\r\n--a b \r\n\r\nt\r\n",
    b"Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nt\r\n--bx\r\n"
    b"\r\nu\r\n--b--\r\n",
    b"Subject: x\r\nContent-Type: text/plain\r\nContent-Type: text/html\r\n\r\nt\r\n",
    b"Subject: x\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 a\r\n",
    b"Subject: x\r\nnot a header line\r\n\r\nt\r\n",
    b"Subject: x\r\nContent-Type: text\r\n\r\nt\r\n",
    b"Subject: no body and no empty line\r\n",
    b"Subject: x\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\nab=c\r\n",
], ids=["no-close", "no-boundary", "bad-boundary", "delimiter-prefix", "two-types",
        "unknown-cte", "bad-header", "bad-type", "no-body", "bad-base64"])
def test_what_does_not_parse_safely_is_none(raw: bytes) -> None:
    assert add_notice(raw, NOTICE) is None


@pytest.mark.parametrize("depth, ok", [(5, True), (24, False)])
def test_nesting_deeper_than_the_limit_is_none(depth: int, ok: bool) -> None:
    head = b"Subject: x\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n--b0\r\n"
    tail = b"\r\n--b0--\r\n"
    for i in range(1, depth):
        head += f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n".encode()
        tail = f"\r\n--b{i}--".encode() + tail
    raw = head + b"Content-Type: text/plain\r\n\r\nx" + tail
    assert (add_notice(raw, NOTICE) is not None) is ok
