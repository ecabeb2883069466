"""The man pages in deploy/man are what scripts/manpages makes from --help and the
example config today: a stale page fails here."""

from __future__ import annotations

from pathlib import Path

from mailtalk.cli import manpages
from mailtalk.config import SCHEMA

ROOT = Path(__file__).resolve().parents[2]


def test_committed_pages_are_current():
    for name, text in manpages.pages(ROOT).items():
        committed = (ROOT / "deploy" / "man" / name).read_text(encoding="utf-8")
        assert committed == text, f"deploy/man/{name} is stale: run scripts/manpages"


def test_pages_cover_every_subcommand_and_key():
    pages = manpages.pages(ROOT)
    for sub in ("run", "milter", "filter", "presence", "check", "dns", "trial", "user"):
        assert f".SS {sub}\n" in pages["mailtalk.8"], sub
    toml = pages["mailtalk.toml.5"]
    for section, keys in SCHEMA.items():
        assert f".SS [{section}]\n" in toml, section
        for key in keys:
            assert f"\\fB{key}\\fR" in toml, f"[{section}] {key}"
