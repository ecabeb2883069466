"""The visible notice: who sent a mail, their state when it arrived, and the recipient's
own chat link, put at the top of what the recipient reads.

`add_notice(raw, notice)` returns the whole message with the notice added, or None when
the mail must stay as it is (the caller then adds only its header field):

* text/plain: a few lines and one blank line before the original text;
* text/html: one small block right after the `<body ...>` start tag (without a body tag:
  after a leading doctype, `<html>` and complete `<head>`); inline styles only, no image,
  script or external resource, no text or background colour (light and dark themes);
* multipart/alternative: its text/plain and text/html alternatives; multipart/mixed,
  related and others: the first readable text part (or alternative) in document order;
  attachments are never touched;
* None for signed or encrypted mail anywhere in the tree (multipart/signed, encrypted,
  application/pkcs7-mime...), inline PGP, what does not parse safely
  (`mailtalk.notice_mime`), a text part over 4 MiB, an unknown charset or one that is
  not ASCII-compatible, a transfer encoding we do not know, or a notice that cannot be
  written in the part's charset (7bit parts: in ASCII). HTML never fails on the charset
  (character references); plain text falls back to the notice without the display name.

The changed part keeps its charset and transfer encoding: 7bit/8bit/binary get the
notice bytes inserted and nothing else moves; quoted-printable and base64 parts are
decoded, changed and re-encoded alone. Every other byte, the top-level header block
included, is unchanged (`notice_mime.splice`).

The marker, so that the sending milter can find a quoted or forwarded notice again
(`mailtalk.notice_strip`): the visible token `mailtalk:` opens the notice's first line,
in plain text and in HTML, and the HTML block also carries `data-mailtalk="notice"`.
Both are written by this code around the site's template, so a site's wording cannot
drop them. Which clients keep what: the token is text, so any client that quotes with
`>` or forwards inline keeps it. A client that quotes the received HTML as it is, inside
a `<blockquote type="cite">` (Thunderbird does), keeps the block with its attribute. A
client or webmail that sanitizes HTML may drop `data-*` attributes; the visible token then
still finds the block. A client that rewrites the HTML into its own markup (Outlook) may
keep neither; there the link fallback (any chat-link URL, any `<a href>` to one) works.
These are the clients' usual behaviours, not tested here against the clients themselves.

Wording: jinja2 templates (`NoticeTemplates.load`), the HTML one autoescaped. Fields:
`sender`, `sender_name`, `status`, `state_text` ("was online when this mail arrived"),
`link`. The plain text is one paragraph: CRs and blank lines are removed, our code adds
the marker in front and one blank line after, in the part's line ending.
"""

from __future__ import annotations

import dataclasses
import email.errors
import email.header
import email.utils
import itertools
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.sandbox
from markupsafe import escape

from mailtalk import notice_mime as mime
from mailtalk.notice_mime import Part, Unsafe, split_header

__all__ = ["Notice", "NoticeTemplates", "add_notice", "display_name", "split_header",
           "MARKER", "STATUSES"]

MARKER = "mailtalk:"
STATUSES = ("online", "away", "busy", "offline", "unknown")
STATE_TEXT = {s: f"was {s} when this mail arrived" for s in STATUSES}
STATE_TEXT["unknown"] = "wrote this mail (whether they were online could not be told)"
NAME_MAX = 200
LINE_MAX = 998          # RFC 5322, for notice bytes inserted into a 7bit/8bit part
_BOM = b"\xef\xbb\xbf"

DEFAULT_TEXT = """\
{% if sender_name %}{{ sender_name }} <{{ sender }}>{% else %}{{ sender }}{% endif %} \
{{ state_text }}.
Chat about this mail: {{ link }}
"""
DEFAULT_HTML = """\
{% if sender_name %}{{ sender_name }} &lt;{{ sender }}&gt;{% else %}{{ sender }}{% endif %} \
{{ state_text }}.<br>
<a href="{{ link }}">Chat about this mail</a>
"""
# Our wrapper: a mid-grey border and padding, no colour of its own, so it reads in
# light and dark themes; the marker attribute and the visible marker come first.
HTML_OPEN = ('<div data-mailtalk="notice" style="margin:0 0 16px 0;padding:8px 12px;'
             'border:1px solid #8c8c8c;border-radius:4px;color:inherit;'
             'font-size:90%;line-height:1.4">\n<span style="font-weight:bold">'
             f'{MARKER}</span> ')
HTML_CLOSE = "\n</div>"
_FORBIDDEN_HTML = re.compile(
    r"<\s*/?\s*(script|style|img|link|iframe|object|embed|form|meta|base|svg|video|audio"
    r"|source|input|button)\b|\bsrc\s*=|url\s*\(|\bon[a-z]+\s*=", re.I)
_DIV = re.compile(r"<(/?)div\b", re.I)
_LINK = re.compile(r"https?://[!-~]{1,2000}")
_SAMPLE = ("alice@example.org", "Alice Example", "https://chat.example.org/c/SAMPLE_link-token")


def _printable(value: str) -> bool:
    """No control, format, separator-line or unassigned characters (no CR/LF, no bidi
    overrides, no U+FFFD from a bad decode)."""
    return all(unicodedata.category(c)[0] != "C" and unicodedata.category(c) not in
               ("Zl", "Zp") and c != "\ufffd" for c in value)


@dataclass(frozen=True)
class Notice:
    """What one recipient's notice says. `sender_name` with control characters, or
    longer than NAME_MAX, or equal to the address, is dropped (the address is shown)."""
    sender: str
    sender_name: str
    status: str                 # online | away | busy | offline | unknown
    link: str                   # the recipient's chat URL
    templates: NoticeTemplates | None = None     # None: the embedded defaults

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"notice status must be one of {STATUSES}, not {self.status!r}")
        if not _LINK.fullmatch(self.link):
            raise ValueError("notice link must be an http(s) URL of printable ASCII")
        if "@" not in self.sender or len(self.sender) > 320 or not _printable(self.sender) \
                or any(c.isspace() for c in self.sender):
            raise ValueError(f"notice sender is not an address: {self.sender!r}")
        name = " ".join(self.sender_name.split())
        if (not _printable(self.sender_name) or len(name) > NAME_MAX
                or name.lower() == self.sender.lower()):
            name = ""
        object.__setattr__(self, "sender_name", name)

    def context(self) -> dict[str, str]:
        return {"sender": self.sender, "sender_name": self.sender_name,
                "status": self.status, "state_text": STATE_TEXT[self.status],
                "link": self.link}


def _environment(autoescape: bool) -> jinja2.Environment:
    return jinja2.sandbox.SandboxedEnvironment(
        autoescape=autoescape, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True)


class _Default:
    """DEFAULT_TEXT and DEFAULT_HTML as plain Python: the same output as jinja2 gives
    (a unit test compares them), without jinja2's per-render context (about 40 us of
    the notice's 190 us per copy; the notice's filter CPU per mail went from +12% to
    the figure in docs/benchmarks.md)."""

    def __init__(self, html: bool) -> None:
        self._html = html

    def render(self, ctx: dict[str, str]) -> str:
        if not self._html:
            who = f"{ctx['sender_name']} <{ctx['sender']}>" if ctx["sender_name"] else ctx["sender"]
            return f"{who} {ctx['state_text']}.\nChat about this mail: {ctx['link']}\n"
        e = {k: str(escape(v)) for k, v in ctx.items()}
        who = f"{e['sender_name']} &lt;{e['sender']}&gt;" if e["sender_name"] else e["sender"]
        return (f"{who} {e['state_text']}.<br>\n"
                f'<a href="{e["link"]}">Chat about this mail</a>\n')


class NoticeTemplates:
    """The site's wording (or the defaults), with our marker added around it."""

    def __init__(self, text: jinja2.Template | _Default,
                 html: jinja2.Template | _Default) -> None:
        self._text = text
        self._html = html

    @classmethod
    def load(cls, text_path: Path | None = None,
             html_path: Path | None = None) -> NoticeTemplates:
        """Compile the templates (None: the default) and try them on every status.
        Raises ValueError naming the file when one does not read, parse or render, or
        leaves the link out, or (HTML) has a script, style, image or external resource."""
        self = cls(_compile(text_path, DEFAULT_TEXT, autoescape=False),
                   _compile(html_path, DEFAULT_HTML, autoescape=True))
        for status in STATUSES:
            sample = Notice(_SAMPLE[0], _SAMPLE[1], status, _SAMPLE[2])
            for path, render, link in ((text_path, self._text, sample.link),
                                       (html_path, self._html, str(escape(sample.link)))):
                try:
                    out = render.render(sample.context())
                except jinja2.TemplateError as e:
                    raise ValueError(f"{path}: notice template does not render: {e}") from e
                if link not in out:
                    raise ValueError(f"{path}: notice template must show {{{{ link }}}}")
                if render is self._html:
                    _check_html(path, out)
        return self

    def text(self, notice: Notice, eol: str = "\n") -> str:
        """The plain notice: marker, the site's lines, one blank line; no CR of its own."""
        out = self._text.render(notice.context())
        lines = [line.rstrip() for line in out.replace("\r", "").split("\n")]
        lines = [line for line in lines if line.strip()]
        if not lines or notice.link not in out:
            lines.append(f"Chat about this mail: {notice.link}")
        if not lines[0].startswith(MARKER):
            lines[0] = f"{MARKER} {lines[0]}"
        return eol.join(lines) + eol + eol

    def html(self, notice: Notice, eol: str = "\n") -> str:
        """The HTML block: our marked wrapper around the site's (escaped) markup."""
        inner = self._html.render(notice.context()).replace("\r", "").strip()
        if str(escape(notice.link)) not in inner:
            inner += f'<br>\n<a href="{escape(notice.link)}">Chat about this mail</a>'
        return (HTML_OPEN + inner + HTML_CLOSE).replace("\n", eol)


def _compile(path: Path | None, default: str, autoescape: bool) -> jinja2.Template:
    try:
        source = default if path is None else path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as e:
        raise ValueError(f"{path}: cannot read notice template: {e}") from e
    try:
        return _environment(autoescape).from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"{path}: line {e.lineno}: notice template does not parse: "
                         f"{e.message}") from e


def _check_html(path: Path | None, out: str) -> None:
    bad = _FORBIDDEN_HTML.search(out)
    if bad:
        raise ValueError(f"{path}: the HTML notice may not contain {bad.group(0)!r} "
                         "(no script, style, image or external resource)")
    depth = 0
    for m in _DIV.finditer(out):      # a stray </div> would close our wrapper early
        depth += -1 if m.group(1) else 1
        if depth < 0:
            break
    if depth:
        raise ValueError(f"{path}: the HTML notice must close every <div> it opens, in order")


@lru_cache(maxsize=1)
def default_templates() -> NoticeTemplates:
    NoticeTemplates.load(None, None)          # the built-in wording still loads and checks
    return NoticeTemplates(_Default(html=False), _Default(html=True))


def display_name(raw: bytes) -> str:
    """The display name of the message's single From: address (RFC 2047 decoded;
    SMTPUTF8 raw UTF-8 accepted), or "" when there is none or it cannot be read."""
    head, _ = split_header(raw[:mime.HEADER_MAX])
    found = re.findall(rb"^from[ \t]*:([^\n]*\n?(?:[ \t][^\n]*\n?)*)", head, re.I | re.M)
    if len(found) != 1:
        return ""
    value = re.sub(rb"\r?\n", b"", found[0]).strip().decode("utf-8", "replace")
    try:
        pairs = email.utils.getaddresses([value])
        if len(pairs) != 1 or not pairs[0][1]:
            return ""
        name = str(email.header.make_header(email.header.decode_header(pairs[0][0])))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return ""
    name = " ".join(name.split())
    return name if _printable(name) else ""


# --- where the notice goes ---

_TAG_REST = rb"(?:[^>\"']|\"[^\"]*\"|'[^']*')*>"
_BODY_TAG = re.compile(rb"<body(?=[\s/>])" + _TAG_REST, re.I)
_COMMENT = re.compile(rb"<!--.*?-->", re.S)
_RAW_NAMES = rb"(script|style|title|textarea|xmp|noscript|template|iframe|noembed|noframes)"
_RAW_TEXT = re.compile(rb"<" + _RAW_NAMES + rb"(?=[\s/>]).*?</\1\s*>", re.I | re.S)
_RAW_OPEN = re.compile(rb"<" + _RAW_NAMES + rb"(?=[\s/>])", re.I)
_ANY_TAG = re.compile(rb"<[!/?]?[a-zA-Z]" + _TAG_REST)
_PROLOGUE = re.compile(rb"(?:\s+|<!--.*?-->|<!doctype\b[^>]*>|<\?xml\b[^>]*>|<html(?=[\s/>])"
                       + _TAG_REST + rb")*", re.I | re.S)
_HEAD = re.compile(rb"<head(?=[\s/>])" + _TAG_REST + rb".*?</head\s*>", re.I | re.S)
_HEAD_OPEN = re.compile(rb"<head(?=[\s/>])", re.I)


def _plain_markup(prefix: bytes) -> bool:
    """True if an HTML parser is in plain markup after `prefix`: no open comment, no open
    script/style/title..., no open tag or attribute value."""
    p = _COMMENT.sub(b"", prefix)
    if b"<!--" in p:
        return False
    p = _RAW_TEXT.sub(b"", p)
    if _RAW_OPEN.search(p):
        return False
    return b"<" not in _ANY_TAG.sub(b"", p)


def html_insert_at(data: bytes) -> int:
    """Offset in the HTML text where the block goes. Raises Unsafe."""
    tags = list(itertools.islice(_BODY_TAG.finditer(data), 3))
    for m in tags:
        if _plain_markup(data[:m.start()]):
            return m.end()
    if not tags:        # no body tag: after the doctype, <html> and a complete <head>
        pos = _PROLOGUE.match(data).end()
        head = _HEAD.match(data, pos)
        if head is not None and _plain_markup(data[pos:head.end()]):
            pos = _PROLOGUE.match(data, head.end()).end()
        if _HEAD_OPEN.match(data, pos) is None:
            return pos
    raise Unsafe("no safe place in the HTML")


def readable(part: Part) -> list[Part]:
    """The text part(s) a recipient reads first: every alternative of an alternative,
    the first readable child (document order) of any other multipart."""
    if part.attachment:
        return []
    if part.is_text:
        return [part]
    if part.ctype == "multipart/alternative":
        return [p for child in part.children for p in readable(child)]
    if part.ctype.startswith("multipart/"):
        for child in part.children:
            found = readable(child)
            if found:
                return found
    return []


class _Rendered:
    """The notice rendered once per mail, encoded per part."""

    def __init__(self, notice: Notice) -> None:
        self.notice = notice
        self.templates = notice.templates or default_templates()
        self._cache: dict[tuple[bytes, bool | None], str] = {}

    def html(self, eol: bytes) -> str:
        key = (eol, None)
        if key not in self._cache:
            self._cache[key] = self.templates.html(self.notice, eol.decode())
        return self._cache[key]

    def text(self, eol: bytes, with_name: bool) -> str:
        key = (eol, with_name)
        if key not in self._cache:
            n = self.notice if with_name else dataclasses.replace(self.notice, sender_name="")
            self._cache[key] = self.templates.text(n, eol.decode())
        return self._cache[key]

    def text_bytes(self, eol: bytes, codec: str, seven_bit: bool) -> bytes:
        for with_name in (True, False) if self.notice.sender_name else (True,):
            try:
                data = self.text(eol, with_name).encode(codec)
            except UnicodeError:
                continue
            if data.isascii() or not seven_bit:
                return data
        raise Unsafe("the notice cannot be written in this part's charset")


def _notice_edit(raw: bytes, part: Part, rendered: _Rendered) -> tuple[int, int, bytes]:
    codec = mime.ascii_codec(part.charset or "us-ascii")
    if codec is None:
        raise Unsafe(f"charset {part.charset!r}")
    data = mime.decode_body(raw, part)
    if mime.PGP_ARMOR in data:
        raise Unsafe("inline PGP")
    eol = mime.data_eol(data, mime.transport_eol(raw, part))
    seven_bit = part.cte in ("", "7bit")
    if part.ctype == "text/html":
        at = html_insert_at(data)
        at = max(at, len(_BOM)) if data.startswith(_BOM) else at
        block = rendered.html(eol).encode("ascii" if seven_bit else codec, "xmlcharrefreplace")
    else:         # after a byte order mark, which must stay first
        at = len(_BOM) if data.startswith(_BOM) else 0
        block = rendered.text_bytes(eol, codec, seven_bit)
    if part.cte in mime.IDENTITY_CTES:
        if max(map(len, block.split(b"\n"))) > LINE_MAX:
            raise Unsafe("a notice line is too long")
        mime.check_delimiters(block, part)
        return part.body_start + at, part.body_start + at, block
    new = mime.encode_body(raw, part, data[:at] + block + data[at:])
    mime.check_delimiters(new, part)
    return part.body_start, part.end, new


def add_notice(raw: bytes, notice: Notice) -> bytes | None:
    """The whole message with the notice in the text part(s) the recipient reads, or
    None when the message must not be touched (see the module docstring)."""
    try:
        root = mime.parse(raw)
        if mime.sealed(root) or mime.armored(raw, root, attachments=False):
            return None
        targets = readable(root)
        if not targets:
            return None
        rendered = _Rendered(notice)
        return mime.splice(raw, [_notice_edit(raw, p, rendered) for p in targets])
    except Unsafe:
        return None
