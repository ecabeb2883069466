"""The layers, and the fixtures shared by component and e2e tests.

tests/unit: no sockets, no subprocesses; tests/component: loopback servers in-process
and the real `mailtalk` command; tests/e2e: Postfix, Sendmail, dnsmasq, Chromium,
miltertest, swaks, systemd-analyze (root and Debian packages). Every test under
tests/e2e gets the `e2e` marker here, from its directory (`-m "not e2e"` leaves them
out); their fixtures (tests/e2e/conftest.py) skip with the reason without root or a
package, so a developer without root can still run the other layers.

Every factory stops what it started at teardown, even when the test failed. The
helpers are in tests/support/ (`from support.postfix import PostfixInstance`, ...;
pyproject.toml puts tests/ on sys.path): see docs/testing.md.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pytest

from support.mailtalk import MailtalkService
from support.postfix import chmod_chain

log = logging.getLogger("tests.conftest")

# Postfix's processes (users postfix and nobody) must enter the instance dirs;
# pytest's tmp_path chain is 0700, so instances live under a 0755 dir of their own.
_TMP_ROOT = Path(os.environ.get("MAILTALK_TEST_TMP", tempfile.gettempdir()))


E2E = Path(__file__).resolve().parent / "e2e"


@pytest.hookimpl(tryfirst=True)     # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The `e2e` marker comes from the directory: every test under tests/e2e has it."""
    for item in items:
        if item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)


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
