"""The notice's wording: its values, the sender's display name, and a site's own
templates (jinja2, the HTML one autoescaped; our marker is always added)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.chat_links import chat_link
from mailtalk.notice import (Notice, NoticeTemplates, add_notice, default_templates,
                             display_name, split_header)


LINK = chat_link()
NOTICE = Notice("alice@a.example", "Alice Example", "online", LINK)


def test_notice_values_are_checked() -> None:
    with pytest.raises(ValueError):
        Notice("alice@a.example", "", "idle", LINK)
    with pytest.raises(ValueError):
        Notice("alice@a.example", "", "online", "javascript:alert(1)")
    with pytest.raises(ValueError):
        Notice("alice@a.example\r\nX: y", "", "online", LINK)
    assert Notice("alice@a.example", "Eve\r\nX-Evil: 1", "online", LINK).sender_name == ""
    assert Notice("alice@a.example", "Eve\u202egnp.exe", "online", LINK).sender_name == ""
    assert Notice("alice@a.example", "  Alice   Example ", "online", LINK).sender_name == \
        "Alice Example"
    assert Notice("alice@a.example", "ALICE@a.example", "online", LINK).sender_name == ""


def test_state_text_for_every_status() -> None:
    for status in ("online", "away", "busy", "offline"):
        text = default_templates().text(Notice("a@b.example", "", status, LINK))
        assert text.startswith(f"mailtalk: a@b.example was {status} when this mail arrived.\n")
    # a known mail whose sender's presence could not be told (the service's processes
    # could not hear each other): the link, without a claim either way
    text = default_templates().text(Notice("a@b.example", "", "unknown", LINK))
    assert text == (f"mailtalk: a@b.example wrote this mail (whether they were online could "
                    f"not be told).\nChat about this mail: {LINK}\n\n")


@pytest.mark.parametrize("header, name", [
    (b"From: Alice Example <alice@a.example>", "Alice Example"),
    (b"From: \"Doe, John\" <j@a.example>", "Doe, John"),
    (b"From: =?UTF-8?B?5bGx55Sw?= <y@a.example>", "山田"),
    (b"From: =?iso-8859-1?q?J=F6rg?=\r\n <j@a.example>", "Jörg"),
    ("From: Jörg <j@a.example>".encode(), "Jörg"),
    (b"From: j@a.example", ""),
    (b"From: a@a.example, b@a.example", ""),
    (b"From: =?x-bad?q?x?= <j@a.example>", ""),
    (b"Sender: x@a.example", ""),
])
def test_display_name(header: bytes, name: str) -> None:
    assert display_name(header + b"\r\nSubject: x\r\n\r\nbody From: Mallory <m@x>\r\n") == name


def test_custom_templates_are_escaped_and_marked(tmp_path: Path) -> None:
    (tmp_path / "n.txt").write_text("{{ sender_name }} ({{ status }}):\n\n\n{{ link }}\r\n")
    (tmp_path / "n.html").write_text('<p>{{ sender_name }} {{ state_text }} '
                                     '<a href="{{ link }}">chat</a></p>')
    t = NoticeTemplates.load(tmp_path / "n.txt", tmp_path / "n.html")
    n = Notice("alice@a.example", "<b>Al</b>", "busy", LINK, templates=t)
    assert t.text(n, "\r\n") == f"mailtalk: <b>Al</b> (busy):\r\n{LINK}\r\n\r\n"
    html = t.html(n)
    assert html.startswith('<div data-mailtalk="notice"') and "mailtalk:</span>" in html
    assert "&lt;b&gt;Al&lt;/b&gt; was busy when this mail arrived" in html
    raw = b"Subject: x\r\nContent-Type: text/html\r\n\r\n<body>x</body>"
    out = add_notice(raw, n)
    assert out is not None and out.startswith(split_header(raw)[0])
    assert t.html(n, "\r\n").encode() in out


@pytest.mark.parametrize("text, html, error", [
    ("{% if %}", None, "n.txt: line 1"),
    ("no link here", None, "must show"),
    (None, "<p>{{ link }}</p><img src=x>", "<img"),
    (None, '<a href="{{ link }}" onclick="x()">x</a>', "onclick"),
    (None, '<div><a href="{{ link }}">x</a>', "close every <div>"),
    (None, '</div><a href="{{ link }}">x</a><div>', "close every <div>"),
    (None, '<a href="{{ nope }}">x</a>', "does not render"),
])
def test_bad_templates_name_the_file(tmp_path: Path, text: str | None, html: str | None,
                                     error: str) -> None:
    paths: list[Path | None] = []
    for name, content in (("n.txt", text), ("n.html", html)):
        if content is None:
            paths.append(None)
        else:
            (tmp_path / name).write_text(content)
            paths.append(tmp_path / name)
    with pytest.raises(ValueError, match=error) as e:
        NoticeTemplates.load(*paths)
    assert "n.txt" in str(e.value) or "n.html" in str(e.value)


def test_missing_template_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothere.txt"):
        NoticeTemplates.load(tmp_path / "nothere.txt", None)


@pytest.mark.parametrize("name", ["", "Alice Example", 'Ev<il> & "Co"', "Jörg Ü"])
@pytest.mark.parametrize("status", ["online", "away", "busy", "offline"])
def test_the_built_in_wording_without_jinja2_is_the_same(name: str, status: str) -> None:
    from mailtalk.notice import NoticeTemplates, default_templates
    jinja = NoticeTemplates.load(None, None)
    fast = default_templates()
    n = Notice("alice@a.example", name, status, "https://chat.a.example/c/T?a=1&b=<2>")
    for eol in ("\n", "\r\n"):
        assert fast.text(n, eol) == jinja.text(n, eol)
        assert fast.html(n, eol) == jinja.html(n, eol)
