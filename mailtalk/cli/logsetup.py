"""stdlib logging to stderr; one logger per component (mailtalk.milter, .filter, ...)."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def setup(level: str = "info", verbose: int = 0) -> None:
    lvl = logging.DEBUG if verbose else getattr(logging, level.upper(), logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    if not verbose:
        # aiohttp's per-request access log is noise for a mail service.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
