"""Signed lookups: a chat link for recipient R goes only to R's own mail server.

A receiving hook signs each lookup with its site's Ed25519 key, as an HTTP Message
Signature (RFC 9421) over the method, the path and the body's digest (RFC 9530
Content-Digest), with a creation time and the key id = the recipients' domain:

    Content-Digest: sha-256=:<base64 of SHA-256(body)>:
    Signature-Input: mailtalk=("@method" "@path" "content-digest");created=1764400000;nonce="<random>";keyid="b.example";alg="ed25519"
    Signature: mailtalk=:<base64 of the Ed25519 signature of the signature base>:

The signature base is RFC 9421's, one line per component and the parameters last:

    "@method": POST
    "@path": /api/v1/lookup
    "content-digest": sha-256=:...:
    "@signature-params": ("@method" "@path" "content-digest");created=...;nonce="...";keyid="...";alg="ed25519"

The domain publishes the public key beside its endpoint, `k=` in its `_mailtalk` TXT
record (`mailtalk dns`); two `k=` tags during a key change. The presence service
accepts a signature that verifies with one of the keys that the key id's domain
publishes, created within MAX_SKEW seconds of its clock, and not seen before (the
replay guard keeps each signature for twice that window; the nonce makes every
signature new, so that a hook asking the same twice is not taken for a replay).

Written directly (keys and signing with `cryptography`, verifying with PyNaCl's
libsodium, the cheaper on the lookup path) rather than with a general RFC 9421
library: one fixed set of three components, one algorithm, strict parsing of exactly
what we send.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

log = logging.getLogger("mailtalk.signing")

LABEL = "mailtalk"
COMPONENTS = '("@method" "@path" "content-digest")'
MAX_SKEW = 300               # seconds a signature's creation time may differ from ours
REPLAY_MAX_ENTRIES = 200_000   # signatures remembered; beyond, the oldest go first
_INPUT = re.compile(LABEL + r'=\("@method" "@path" "content-digest"\);created=(\d{1,12});'
                    r'nonce="[A-Za-z0-9_-]{16,64}";keyid="([a-z0-9.-]{1,253})";alg="ed25519"')
_SIGNATURE = re.compile(LABEL + r"=:([A-Za-z0-9+/]{86}==):")
_DIGEST = re.compile(r"sha-256=:([A-Za-z0-9+/]{43}=):")


class SigningKeyError(Exception):
    """The signing key file cannot be read or made; str() names the file."""


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The site's lookup signing key (a raw 32-byte Ed25519 seed, mode 0600); made at
    first start."""
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        seed = secrets.token_bytes(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:           # another process of this site won the race
            return load_or_create_signing_key(path)
        with os.fdopen(fd, "wb") as f:
            f.write(seed)
        log.info("%s: new lookup signing key; publish it: mailtalk dns", path)
    except OSError as e:
        raise SigningKeyError(f"{path}: cannot read the signing key: {e.strerror}") from None
    if len(seed) != 32:
        raise SigningKeyError(f"{path}: the signing key must be exactly 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_text(key: Ed25519PrivateKey) -> str:
    """The `k=` value: the raw public key in base64."""
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


def content_digest(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


def _base(method: str, path: str, digest: str, params: str) -> bytes:
    return (f'"@method": {method}\n"@path": {path}\n"content-digest": {digest}\n'
            f'"@signature-params": {params}').encode()


def sign(key: Ed25519PrivateKey, keyid: str, method: str, path: str, body: bytes,
         created: int) -> dict[str, str]:
    """The three request headers that sign this request."""
    digest = content_digest(body)
    params = (f'{COMPONENTS};created={created};nonce="{secrets.token_urlsafe(16)}";'
              f'keyid="{keyid}";alg="ed25519"')
    signature = key.sign(_base(method, path, digest, params))
    return {"Content-Digest": digest, "Signature-Input": f"{LABEL}={params}",
            "Signature": f"{LABEL}=:{base64.b64encode(signature).decode()}:"}


KeysOf = Callable[[str], Awaitable[tuple[str, ...]]]     # domain -> its published k= values


class Verifier:
    """Checks signed lookups; one per presence process (the replay guard is in memory)."""

    def __init__(self, keys_of: KeysOf, clock: Callable[[], float] = time.time) -> None:
        self._keys_of = keys_of
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()   # signature -> forget after

    async def signer(self, headers: Mapping[str, str], method: str, path: str,
                     body: bytes) -> str | None:
        """The domain whose published key signed this request, fresh and not a replay;
        None for anything else (unsigned, malformed, stale, unknown key, replay)."""
        m_input = _INPUT.fullmatch(headers.get("Signature-Input", ""))
        m_sig = _SIGNATURE.fullmatch(headers.get("Signature", ""))
        digest = headers.get("Content-Digest", "")
        if m_input is None or m_sig is None or not _DIGEST.fullmatch(digest):
            return None
        if digest != content_digest(body):
            return None
        created, keyid = int(m_input.group(1)), m_input.group(2)
        now = self._clock()
        if abs(now - created) > MAX_SKEW:
            return None
        signature = base64.b64decode(m_sig.group(1))
        base = _base(method, path, digest, m_input.group(0)[len(LABEL) + 1:])
        if not await self._verifies(keyid, signature, base):
            return None
        if not self._first_use(signature, now):
            log.warning("lookup signed by %s: a replayed signature, refused", keyid)
            return None
        return keyid

    async def _verifies(self, keyid: str, signature: bytes, base: bytes) -> bool:
        """libsodium's verification (PyNaCl): 67 us here against 122 us for OpenSSL's
        through `cryptography`, where verifying was 39% of a lookup's CPU."""
        for text in await self._keys_of(keyid):
            try:
                VerifyKey(base64.b64decode(text, validate=True)).verify(base, signature)
                return True
            except (BadSignatureError, ValueError, binascii.Error):
                continue
        return False

    def _first_use(self, signature: bytes, now: float) -> bool:
        seen = self._seen
        while seen and next(iter(seen.values())) < now:     # oldest first: expired ones
            seen.popitem(last=False)
        if signature in seen:
            return False
        seen[signature] = now + 2 * MAX_SKEW
        while len(seen) > REPLAY_MAX_ENTRIES:
            seen.popitem(last=False)
        return True
