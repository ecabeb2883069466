"""pytest.skip with a clear reason when a test's real components cannot run here
(not root, a Debian package missing), so unit tests still run for a developer."""

from __future__ import annotations

import os
import shutil

import pytest

from . import dns, postfix
from .smtp import swaks_available


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


def require_postfix() -> None:
    """Private Postfix instances can run: root, and Debian's postfix installed."""
    reason = postfix.available()
    if reason:
        pytest.skip(f"Postfix e2e: {reason}")


def require_swaks() -> None:
    reason = swaks_available()
    if reason:
        pytest.skip(reason)


def require_dnsmasq() -> None:
    reason = dns.available()
    if reason:
        pytest.skip(f"DNS e2e: {reason}")


def require_tool(path: str, package: str) -> None:
    """Any other program, e.g. require_tool("/usr/bin/miltertest", "miltertest")."""
    if shutil.which(path) is None:
        pytest.skip(f"{path} is missing (apt-get install {package})")
