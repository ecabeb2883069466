"""The systemd units a postmaster copies (deploy/systemd/*.service), and reading one."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "deploy/systemd").glob("*.service"))


def unit(path: Path) -> configparser.ConfigParser:
    """A unit file as sections of case-kept keys (no interpolation)."""
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str
    p.read(path)
    return p
