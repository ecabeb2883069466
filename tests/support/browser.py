"""Debian's chromium driven by PyPI's playwright: never a browser download."""

from __future__ import annotations

import shutil
from typing import AsyncIterator

import pytest

CHROMIUM = "/usr/bin/chromium"
# No sandbox as root; no background traffic: this machine has no network.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]


async def launch() -> AsyncIterator:
    """For an async fixture: `yield` from this to get a started browser."""
    from playwright.async_api import async_playwright

    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/setup)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        await b.close()
