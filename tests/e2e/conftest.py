"""Fixtures of the e2e tests: private Postfix instances and dnsmasq servers, made by
factories that stop what they started at teardown and skip (with the reason) when
root or the Debian package is missing. (`e2e_dir` and `mailtalk_factory`, which
component tests use too, are in tests/conftest.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Mapping

import pytest

from support import postfix as postfix_support
from support.dns import Dnsmasq
from support.postfix import PostfixInstance
from support.requires import require_dnsmasq, require_postfix

PostfixFactory = Callable[..., PostfixInstance]


@pytest.fixture
def postfix_factory(e2e_dir: Path) -> Iterator[PostfixFactory]:
    """`postfix_factory(name, address, domain, smtp_port=None) -> PostfixInstance`
    (configured, not started). Every instance made is stopped at teardown."""
    require_postfix()
    made: list[PostfixInstance] = []

    def make(name: str, address: str, domain: str, smtp_port: int | None = None
             ) -> PostfixInstance:
        inst = PostfixInstance(e2e_dir, name, address, domain, smtp_port=smtp_port)
        made.append(inst)
        return inst

    yield make
    postfix_support.wait_stopped(made)


DnsFactory = Callable[..., Dnsmasq]


@pytest.fixture
def dns_factory(e2e_dir: Path) -> Iterator[DnsFactory]:
    """`dns_factory(address, txt_records, a_records=None, port=None) -> Dnsmasq`
    (started). Every server made is stopped at teardown."""
    require_dnsmasq()
    made: list[Dnsmasq] = []

    def make(address: str, txt_records: Mapping[str, str | list[str]] | None = None,
             a_records: Mapping[str, str] | None = None, port: int | None = None) -> Dnsmasq:
        server = Dnsmasq(address, port=port, txt_records=dict(txt_records or {}),
                         a_records=dict(a_records or {}), log_dir=e2e_dir)
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium under playwright (support/browser.py), closed after the test;
    the test skips when playwright is not installed."""
    pytest.importorskip("playwright")
    from support.browser import launch
    async for b in launch():
        yield b
