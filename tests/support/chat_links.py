"""Chat links of mailtalk/links.py's layout, with a random Mail-ID and MAC: the shape
the notice carries and the sending milter recognises, without a site key."""

from __future__ import annotations

import base64
import os


def chat_link(sender: str = "alice@a.example", recipient: str = "bob@b.example",
              base: str = "https://chat.a.example") -> str:
    s, r = sender.encode(), recipient.encode()
    body = bytes([2]) + os.urandom(33) + bytes([len(s)]) + s + r + os.urandom(16)
    return f"{base}/c/{base64.urlsafe_b64encode(body).rstrip(b'=').decode()}"
