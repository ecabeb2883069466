"""A digest as a mail: a reply in the original mail's thread that holds the chat
messages one participant has not seen, and their own link to go on chatting.

    From: mailtalk@a.example            To: bob@b.example
    Subject: Re: <the mail's subject>    In-Reply-To / References: <its Message-ID>
    Auto-Submitted: auto-generated       X-Mailtalk-Digest: <HMAC of the Message-ID>

text/plain and text/html alternatives. A message's text is text in both: escaped in
the HTML (jinja2's autoescape), indented in the plain part, and no header value is
made from it. `X-Mailtalk-Digest` is an HMAC under the site key, which the sending
milter checks to leave the digest's link in place (it removes chat links from
everything else a user sends on).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid

import jinja2

from mailtalk.constants import HDR_DIGEST
from mailtalk.mailid import digest_token
from presence_api.store import Mail, Message

_TEXT = """\
{% if for_sender %}New in the chat about your mail{% else %}New in the chat about the mail{% endif %}
  "{{ subject }}"{% if not for_sender %} from {{ sender }}{% endif %}:
{% for m in messages %}
{{ m.author }}, {{ m.when }}:
{% for line in m.lines %}  {{ line }}
{% endfor %}{% endfor %}
Go on chatting: {{ link }}

You get this because you took part in this chat and had not seen these messages.
Turn these mails off on the chat page.
"""

_HTML = """\
<!doctype html>
<html><body style="font-family:sans-serif">
<p>{% if for_sender %}New in the chat about your mail{% else %}New in the chat about the mail{% endif %}
<b>{{ subject }}</b>{% if not for_sender %} from {{ sender }}{% endif %}:</p>
{% for m in messages %}<p><b>{{ m.author }}</b>, {{ m.when }}:<br>
{% for line in m.lines %}{{ line }}{% if not loop.last %}<br>
{% endif %}{% endfor %}</p>
{% endfor %}<p><a href="{{ link }}">Go on chatting</a></p>
<p style="color:#666;font-size:small">You get this because you took part in this chat and
had not seen these messages. Turn these mails off on the chat page.</p>
</body></html>
"""

_env_text = jinja2.Environment(autoescape=False, keep_trailing_newline=True)
_env_html = jinja2.Environment(autoescape=True, keep_trailing_newline=True)
TEXT, HTML = _env_text.from_string(_TEXT), _env_html.from_string(_HTML)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%a %d %b %Y %H:%M UTC")


@dataclass(frozen=True)
class Digest:
    to: str
    mail: Mail
    messages: list[Message]
    link: str
    for_sender: bool


def compose(d: Digest, from_addr: str, site_key: bytes, now: float | None = None) -> EmailMessage:
    subject = _one_line(d.mail.subject) or "(no subject)"
    view = {"for_sender": d.for_sender, "subject": subject, "sender": d.mail.account,
            "link": d.link,
            "messages": [{"author": m.author, "when": _when(m.ts),
                          "lines": m.text.replace("\r\n", "\n").replace("\r", "\n").split("\n")}
                         for m in d.messages]}
    msg = EmailMessage(policy=SMTP)
    msg["From"] = formataddr(("mailtalk", from_addr))
    msg["To"] = d.to
    msg["Subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}"
    msg["Date"] = format_datetime(datetime.fromtimestamp(now or time.time(), timezone.utc))
    message_id = make_msgid("digest", from_addr.rpartition("@")[2])
    msg["Message-ID"] = message_id
    original = _one_line(d.mail.message_id)
    if original.startswith("<") and original.endswith(">"):
        msg["In-Reply-To"] = original
        msg["References"] = original
    msg["Auto-Submitted"] = "auto-generated"
    msg[HDR_DIGEST] = digest_token(site_key, message_id)
    text, html = TEXT.render(view), HTML.render(view)
    msg.set_content(text, cte=_cte(text))
    msg.add_alternative(html, subtype="html", cte=_cte(html))
    return msg


def _cte(text: str) -> str:
    """Lines as they are (links whole, for people and greps alike) unless a line is
    too long for SMTP; then quoted-printable."""
    if any(len(line.encode()) > 990 for line in text.splitlines()):
        return "quoted-printable"
    return "7bit" if text.isascii() else "8bit"
