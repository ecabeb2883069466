"""Shared fixtures: private Postfix instances, dnsmasq, the real mailtalk command.

Every factory stops what it started at teardown, even when the test failed.
Fixtures that need root or Debian packages skip with the reason, so a developer
without root can still run the unit tests. The helpers are in tests/support/
(`from support.postfix import PostfixInstance`, ...): see docs/testing.md.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pytest

from support import postfix as postfix_support
from support.dns import Dnsmasq
from support.mailtalk import MailtalkService
from support.postfix import PostfixInstance, chmod_chain
from support.requires import require_dnsmasq, require_postfix

log = logging.getLogger("tests.conftest")

# Postfix's processes (users postfix and nobody) must enter the instance dirs;
# pytest's tmp_path chain is 0700, so instances live under a 0755 dir of their own.
_TMP_ROOT = Path(os.environ.get("MAILTALK_TEST_TMP", tempfile.gettempdir()))


@pytest.fixture
def e2e_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh 0755 directory (path chain included) for servers' files; removed
    after a passing test, kept after a failing one (its logs tell why)."""
    import shutil
    safe = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    path = Path(tempfile.mkdtemp(prefix=f"mailtalk-{safe}-", dir=_TMP_ROOT))
    chmod_chain(path)
    yield path
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.passed:
        shutil.rmtree(path, ignore_errors=True)
    else:
        log.warning("kept %s for inspection", path)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    # Lets e2e_dir know whether the test passed (keep the logs of a failure).
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


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


MailtalkFactory = Callable[..., MailtalkService]


@pytest.fixture
def mailtalk_factory(e2e_dir: Path) -> Iterator[MailtalkFactory]:
    """`mailtalk_factory(config, subcommand="run", name="mailtalk", start=True,
    env=None, wait_endpoints=None) -> MailtalkService`. At teardown each one still
    running gets SIGTERM and must exit by itself with status 0 (else the test errors).
    """
    made: list[MailtalkService] = []

    def make(config: Mapping[str, Mapping[str, Any]] | str, subcommand: str = "run",
             name: str = "mailtalk", start: bool = True,
             env: Mapping[str, str] | None = None,
             wait_endpoints: list[str] | None = None) -> MailtalkService:
        service = MailtalkService(e2e_dir, config, subcommand=subcommand, name=name,
                                  env=env, wait_endpoints=wait_endpoints)
        made.append(service)
        if start:
            service.start()
        return service

    yield make
    errors = []
    for service in reversed(made):
        try:
            service.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)
