"""Property-based tests of the notice on generated MIME trees (hypothesis).

Random nesting of mixed/alternative/related up to depth 3; text/plain and text/html leaves
in 7bit/8bit/quoted-printable/base64 and us-ascii/utf-8/iso-8859-1; attachments; CRLF or
LF. The test finds the parts in the raw bytes by itself (it knows every boundary) and
checks: only the chosen text parts differ, every other byte is identical, the result
parses with the same tree, the changed parts decode to notice + original text, and
strip_notices gives the original text back."""

from __future__ import annotations

import base64
import email
import email.policy
import html
import re
from dataclasses import dataclass, field
from email.message import EmailMessage, MIMEPart

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailtalk.notice import Notice, add_notice, default_templates, split_header
from mailtalk.notice_mime import ascii_codec
from mailtalk.notice_strip import strip_notices


@dataclass
class Leaf:
    subtype: str                # plain | html | octet-stream (an attachment)
    text: str = ""
    cte: str = "base64"
    charset: str = "us-ascii"
    disposition: str | None = None
    data: bytes = b""


@dataclass
class Multi:
    subtype: str
    children: list[Leaf | Multi] = field(default_factory=list)
    boundary: str = ""


ALPHABETS = {
    "ascii": st.characters(min_codepoint=32, max_codepoint=126),
    "latin": st.characters(min_codepoint=32, max_codepoint=255,
                           blacklist_categories=("Cc",)),
    "any": st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Co", "Cn")),
}


@st.composite
def text_leaf(draw: st.DrawFn) -> Leaf:
    subtype = draw(st.sampled_from(["plain", "html"]))
    charset = draw(st.sampled_from(["us-ascii", "utf-8", "iso-8859-1"]))
    cte = draw(st.sampled_from(["7bit", "8bit", "quoted-printable", "base64"]))
    kind = ("ascii" if cte == "7bit" or charset == "us-ascii" else
            "latin" if charset == "iso-8859-1" else "any")
    lines = draw(st.lists(st.text(ALPHABETS[kind], max_size=100), max_size=5))
    if subtype == "html":
        inner = "".join(f"<p>{html.escape(line)}</p>\n" for line in lines)
        shape = draw(st.sampled_from([
            "<html><head><title>t</title></head><body>{}</body></html>",
            "<!DOCTYPE html>\n<HTML><BODY class=\"m\" style='a>b'>{}</BODY></HTML>",
            "<html><head><meta charset=x></head>\n{}</html>", "{}"]))
        text = shape.format(inner)
    else:
        text = "\n".join(lines)
    disposition = draw(st.sampled_from([None, None, "inline", "attachment"]))
    return Leaf(subtype, text + "\n", cte, charset, disposition)


attachment = st.builds(lambda data, inline: Leaf("octet-stream", data=data,
                                                 disposition=None if inline else "attachment"),
                       st.binary(max_size=300), st.booleans())


def multipart(depth: int) -> st.SearchStrategy[Multi]:
    return st.builds(Multi, st.sampled_from(["mixed", "alternative", "related"]),
                     st.lists(tree(depth - 1), min_size=1, max_size=3))


def tree(depth: int) -> st.SearchStrategy[Leaf | Multi]:
    leaves = st.one_of(text_leaf(), text_leaf(), attachment)
    return leaves if depth == 0 else st.one_of(leaves, multipart(depth))


# mostly multipart at the top: that is where the bytes of other parts are at stake
MAILS = st.one_of(text_leaf(), multipart(3), multipart(3), multipart(3))


def build(node: Leaf | Multi, top: bool, counter: list[int]) -> MIMEPart:
    part = EmailMessage() if top else MIMEPart()
    if top:
        part["From"], part["To"] = "Alice Example <alice@a.example>", "bob@b.example"
        part["Subject"] = "Grüße"         # an 8-bit header field, as SMTPUTF8 sends it
    if isinstance(node, Multi):
        counter[0] += 1
        node.boundary = f"==mt-{counter[0]}-Qz7=="
        part["Content-Type"] = f'multipart/{node.subtype}; boundary="{node.boundary}"'
        for child in node.children:
            part.attach(build(child, False, counter))
    elif node.subtype == "octet-stream":
        part.set_content(node.data, "application", "octet-stream", filename="a.bin",
                         disposition=node.disposition)
    else:
        part.set_content(node.text, subtype=node.subtype, charset=node.charset, cte=node.cte,
                         disposition=node.disposition)
    return part


def chosen(node: Leaf | Multi) -> list[Leaf]:
    """The rule of the issue, written again for the test."""
    if isinstance(node, Leaf):
        return [node] if node.subtype != "octet-stream" and node.disposition != "attachment" \
            else []
    if node.subtype == "alternative":
        return [leaf for child in node.children for leaf in chosen(child)]
    for child in node.children:
        if found := chosen(child):
            return found
    return []


def leaves(node: Leaf | Multi) -> list[Leaf]:
    return [node] if isinstance(node, Leaf) else [x for c in node.children for x in leaves(c)]


def regions(raw: bytes, node: Leaf | Multi, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of every leaf, header included, found with the known boundaries."""
    if isinstance(node, Leaf):
        return [(start, end)]
    body = re.compile(rb"\r?\n\r?\n").search(raw, start, end).end()
    delim = re.compile(rb"(?:^|(?<=\n))--" + re.escape(node.boundary.encode())
                       + rb"(--)?[ \t]*(\r?\n|$)", re.M)
    found = list(delim.finditer(raw, body, end))
    assert found and found[-1].group(1), "close delimiter"
    out: list[tuple[int, int]] = []
    for m, nxt, child in zip(found, found[1:], node.children, strict=False):
        stop = nxt.start() - (2 if raw[nxt.start() - 2:nxt.start()] == b"\r\n" else 1)
        out += regions(raw, child, m.end(), stop)
    assert len(found) == len(node.children) + 1
    return out


def outside(raw: bytes, spans: list[tuple[int, int]]) -> bytes:
    pieces, pos = [], 0
    for s, e in spans:
        pieces.append(raw[pos:s])
        pos = e
    return b"".join(pieces + [raw[pos:]])


def content(raw: bytes) -> list[str | bytes]:
    return [p.get_content() for p in
            email.message_from_bytes(raw, policy=email.policy.default).walk()
            if not p.is_multipart()]


NAMES = st.sampled_from(["", "Alice Example", "Jörg Ünal", "山田 太郎",
                         '<script>x</script> "q"'])
TOKEN = base64.urlsafe_b64encode(bytes([2]) + bytes(33) + b"\x0falice@a.example"
                                 + b"bob@b.example" + bytes(16)).rstrip(b"=").decode()


def expected(leaf: Leaf, old: str, notice: Notice) -> str:
    eol = "\r\n" if "\r\n" in old else "\n" if "\n" in old else None
    assert eol is not None
    t = default_templates()
    codec = ascii_codec(leaf.charset)
    if leaf.subtype == "html":
        block = t.html(notice, eol).encode("ascii" if leaf.cte == "7bit" else codec,
                                           "xmlcharrefreplace").decode(codec)
        m = re.search(r"<body[^>]*?(?:'[^']*')?>", old, re.I) or re.search(r"</head>\s*", old) \
            or re.match(r"\s*", old)
        at = m.end() if m else 0
        return old[:at] + block + old[at:]
    for n in (notice, Notice(notice.sender, "", notice.status, notice.link)):
        text = t.text(n, eol)
        try:
            if leaf.cte != "7bit" or text.isascii():
                text.encode(codec)
                return text + old
        except UnicodeError:
            pass
    raise AssertionError("unreachable: the address is ASCII")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(root=MAILS, crlf=st.booleans(), name=NAMES,
       status=st.sampled_from(["online", "away", "busy", "offline"]))
def test_only_the_chosen_text_parts_change(root: Leaf | Multi, crlf: bool, name: str,
                                           status: str) -> None:
    policy = email.policy.SMTP if crlf else email.policy.default
    raw = build(root, True, [0]).as_bytes(policy=policy)
    notice = Notice("alice@a.example", name, status, f"https://chat.a.example/c/{TOKEN}")
    out = add_notice(raw, notice)
    targets = chosen(root)
    assert (out is None) == (not targets)
    assert strip_notices(raw) is None
    if out is None:
        return
    head = split_header(raw)[0]
    assert head == raw[:re.search(rb"\r?\n\r?\n", raw).end()] and out.startswith(head)
    old_spans, new_spans = (regions(m, root, 0, len(m)) for m in (raw, out))
    all_leaves = leaves(root)
    keep = [i for i, leaf in enumerate(all_leaves) if not any(leaf is t for t in targets)]
    changed = [i for i in range(len(all_leaves)) if i not in keep]
    # every byte outside the chosen leaves, and every other leaf, is the same
    assert outside(raw, [old_spans[i] for i in changed]) == \
        outside(out, [new_spans[i] for i in changed])
    for i in keep:
        assert raw[slice(*old_spans[i])] == out[slice(*new_spans[i])]
    old_c, new_c = content(raw), content(out)
    parsed = email.message_from_bytes(out, policy=email.policy.default)
    assert [p.get_content_type() for p in parsed.walk()] == \
        [p.get_content_type() for p in email.message_from_bytes(raw).walk()]
    for i in changed:
        # the chosen part's header block is the same; its text is notice + original
        (os_, oe), (ns, ne) = old_spans[i], new_spans[i]
        hdr = re.compile(rb"\r?\n\r?\n|^\r?\n")
        assert raw[os_:hdr.search(raw, os_, oe).end()] == out[ns:hdr.search(out, ns, ne).end()]
        assert new_c[i] == expected(all_leaves[i], old_c[i], notice)
    back = strip_notices(out)
    assert back is not None and TOKEN.encode() not in back
    assert back.count(b"mailtalk:") == raw.count(b"mailtalk:")
    assert content(back) == old_c
    if all(all_leaves[i].cte in ("7bit", "8bit") for i in changed):
        assert back == raw


@settings(max_examples=60, deadline=None)
@given(root=MAILS, crlf=st.booleans(), data=st.data())
def test_damaged_mails_never_raise_and_keep_their_header(root: Leaf | Multi, crlf: bool,
                                                         data: st.DataObject) -> None:
    raw = build(root, True, [0]).as_bytes(
        policy=email.policy.SMTP if crlf else email.policy.default)
    start = data.draw(st.integers(0, len(raw)))
    end = data.draw(st.integers(start, min(len(raw), start + 40)))
    junk = data.draw(st.sampled_from([b"", b"\r\n", b"--", b"\n--==mt-1-Qz7==\n", b"\x00"]))
    damaged = raw[:start] + junk + raw[end:]
    notice = Notice("alice@a.example", "A", "online", f"https://chat.a.example/c/{TOKEN}")
    out = add_notice(damaged, notice)
    assert out is None or out.startswith(split_header(damaged)[0])
    back = strip_notices(damaged if out is None else out)
    assert back is None or back.startswith(split_header(damaged)[0])
