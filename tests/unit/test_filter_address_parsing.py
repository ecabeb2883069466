"""The filter's plain-address parser (milter/filter_smtp.py) gives aiosmtpd's answer for
every address it takes, and leaves the others to aiosmtpd."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from mailtalk_milter.filter_smtp import FilterSMTP


class _NoSessions:
    sessions: set[Any] = set()


@pytest.mark.parametrize("arg", [
    "<bob@b.test>", "<bob@b.test> SIZE=100 BODY=8BITMIME", " <x@y>", "<BOB@B.TEST>",
    "<a.b+c@d-e.f>", "<a@-b.c>", "<a@b.c>x", "<a@b.c>\tSIZE=1", "<a@b.c> (note) SIZE=1",
    "<>", "<> SIZE=5", '<"a b"@c.d>', "<@r:a@b.c>", "bob@b.test", "<bob@[1.2.3.4]>",
    "<a..b@c>", "<.a@c>", "<a@b..c>", "<a@b.c.>", "<a@b.c", "<jörg@b.test>",
    "<" + "x" * 70 + "@b.test>",
])
def test_plain_addresses_parse_as_aiosmtpd_parses_them(arg: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        ours = FilterSMTP(_NoSessions(), loop=loop)
        theirs = SMTP(_NoSessions(), loop=loop)
        assert ours._getaddr(arg) == theirs._getaddr(arg)
    finally:
        loop.close()
