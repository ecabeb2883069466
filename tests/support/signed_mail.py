"""Signed mail for tests: S/MIME made and verified by the real `openssl smime` with a
throwaway key, and a PGP/MIME-shaped mail (multipart/signed with a dummy
application/pgp-signature part: the shape is what counts, no gpg needed)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .requires import require_tool

OPENSSL = "/usr/bin/openssl"


def _openssl(*args: str | Path, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([OPENSSL, *map(str, args)], input=input, capture_output=True,
                          timeout=60)


def crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


def _head(headers: dict[str, str]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()


def smime_signed(workdir: Path, headers: dict[str, str], entity: bytes) -> bytes:
    """`entity` (a MIME entity: its own Content-Type lines, a blank line, the body)
    signed by `openssl smime -sign` (detached, multipart/signed) with a key and
    certificate made now (`openssl req -x509 -newkey rsa:2048 -nodes`), under
    `headers` (From, To, ...): the whole message, CRLF."""
    require_tool(OPENSSL, "openssl")
    key, cert = workdir / "smime-key.pem", workdir / "smime-cert.pem"
    r = _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=alice",
                 "-days", "1", "-keyout", key, "-out", cert)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    (workdir / "smime-entity.txt").write_bytes(crlf(entity))
    r = _openssl("smime", "-sign", "-in", workdir / "smime-entity.txt", "-signer", cert,
                 "-inkey", key, "-crlfeol")
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout.startswith(b"MIME-Version: 1.0"), r.stdout[:200]
    return _head(headers) + crlf(r.stdout)


def smime_verify(workdir: Path, raw: bytes, name: str = "verify.eml"
                 ) -> subprocess.CompletedProcess:
    """`openssl smime -verify -noverify` (the signature, not the certificate chain)
    on a whole message as it is stored (LF or CRLF)."""
    path = workdir / name
    path.write_bytes(raw)
    return _openssl("smime", "-verify", "-noverify", "-in", path, "-out", "/dev/null")


PGP_BOUNDARY = "------------e2ePGPmimeSig0123"
DUMMY_SIGNATURE = """\
-----BEGIN PGP SIGNATURE-----

iHUEARYKAB0WIQTe2eDummyDummyDummyDummyDummyBQJnAAAAAAAKCRCe2eDummy
AAAAAQD/dummy+signature+bytes+for+a+test+only+no+key+behind+it0AP4
x0dummyDummyDummyDummyDummyDummyDummyDummyDummyDummyDummyDummyDu=
=dmmy
-----END PGP SIGNATURE-----
"""


def pgp_mime_signed(headers: dict[str, str], text: str) -> bytes:
    """A PGP/MIME signed mail as Thunderbird and Enigmail shape one (RFC 3156), with a
    dummy signature: CRLF."""
    body = (f'Content-Type: multipart/signed; micalg=pgp-sha256;\r\n'
            f' protocol="application/pgp-signature";\r\n boundary="{PGP_BOUNDARY}"\r\n'
            f"\r\nThis is an OpenPGP/MIME signed message (RFC 4880 and 3156)\r\n"
            f"--{PGP_BOUNDARY}\r\n"
            "Content-Type: text/plain; charset=UTF-8; format=flowed\r\n"
            "Content-Transfer-Encoding: 7bit\r\n\r\n"
            f"{text}\r\n"
            f"--{PGP_BOUNDARY}\r\n"
            'Content-Type: application/pgp-signature; name="OpenPGP_signature.asc"\r\n'
            "Content-Description: OpenPGP digital signature\r\n"
            'Content-Disposition: attachment; filename="OpenPGP_signature.asc"\r\n\r\n'
            f"{DUMMY_SIGNATURE}\r\n"
            f"--{PGP_BOUNDARY}--\r\n")
    return _head({**headers, "MIME-Version": "1.0"}) + crlf(body.encode())
