"""The man pages, made from what the command already says: mailtalk(8) from the
argument parser (the same text as `--help`), mailtalk.toml(5) from
deploy/mailtalk.toml.example (every key with its type, default and comment).

    python -m mailtalk.cli.manpages deploy/man      # scripts/manpages

The pages are kept in deploy/man/ and the wheel installs them under share/man; a
test regenerates them and fails when the committed pages are stale.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from mailtalk import __version__

DATE = "2026-12"          # month of the pages' last change in content (roff .TH)
_KEY = re.compile(r"# ([a-z_]+) (\(.*?\)):\s?(.*)")
_EXAMPLE = re.compile(r"# [a-z_]+ = ")


def _roff(text: str) -> str:
    """Text safe in a roff line: backslashes escaped, no line starting a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _th(name: str, section: int, title: str) -> list[str]:
    return [f'.TH {name.upper()} {section} "{DATE}" "mailtalk {__version__}" "{title}"']


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser, skip: set[str]) -> list[str]:
    out = []
    for a in parser._actions:
        if a.help in (None, argparse.SUPPRESS) or (a.option_strings and set(a.option_strings) & skip):
            continue
        if isinstance(a, argparse._SubParsersAction):
            continue
        if a.option_strings:
            flags = ", ".join(a.option_strings)
            name = f"\\fB{_roff(flags)}\\fR" + (f" \\fI{a.metavar}\\fR" if a.metavar else "")
        else:
            name = f"\\fI{a.metavar or a.dest}\\fR"
        out += [".TP", name, _roff(a.help)]
    return out


def mailtalk_8(parser: argparse.ArgumentParser) -> str:
    """mailtalk(8) from the command's parser."""
    lines = _th("mailtalk", 8, "System Manager's Manual")
    lines += [".SH NAME", "mailtalk \\- " + _roff(parser.description or ""),
              ".SH SYNOPSIS", "\\fBmailtalk\\fR [\\fB\\-c\\fR \\fICONFIG\\fR] [\\fB\\-v\\fR] "
              "\\fISUBCOMMAND\\fR [\\fIARGS\\fR]", ".SH OPTIONS"]
    lines += _options(parser, {"-h"})
    lines += [".PP", "\\fB\\-c\\fR and \\fB\\-v\\fR may also follow the subcommand.",
              ".SH SUBCOMMANDS"]
    for name, sub in _subparsers(parser).items():
        lines += [".SS " + name, _roff(sub.description or "")]
        inner = _subparsers(sub)
        for action_name, action in inner.items():
            lines += [".TP", f"\\fB{name} {action_name}\\fR", _roff(action.description or ""),
                      ".RS", *_options(action, {"-h", "-c", "-v"}), ".RE"]
        if not inner:
            lines += _options(sub, {"-h", "-c", "-v"})
    lines += [".SH FILES", ".TP", "/etc/mailtalk/mailtalk.toml",
              "The configuration; see \\fBmailtalk.toml\\fR(5). When it is absent (and "
              "neither \\fB\\-c\\fR nor MAILTALK_CONFIG names a file), every subcommand "
              "uses the embedded loopback defaults.",
              ".TP", "/var/lib/mailtalk", "The state directory as root: site key, lookup "
              "signing key, SQLite databases, one lock file per running service.",
              ".SH ENVIRONMENT", ".TP", "MAILTALK_CONFIG",
              "The configuration file, when \\fB\\-c\\fR is not given.",
              ".SH EXIT STATUS",
              "0 done; 1 refused or a check failed; 2 a usage or configuration problem.",
              ".SH SEE ALSO", "\\fBmailtalk.toml\\fR(5), \\fBpostconf\\fR(5), "
              "\\fBmilter\\fR(8), \\fBswaks\\fR(1)"]
    return "\n".join(lines) + "\n"


def mailtalk_toml_5(example: str) -> str:
    """mailtalk.toml(5) from the example config: its opening comment, then each
    section's keys with their type and text."""
    lines = _th("mailtalk.toml", 5, "File Formats Manual")
    lines += [".SH NAME", "mailtalk.toml \\- the configuration of mailtalk(8)",
              ".SH DESCRIPTION"]
    body: list[str] = []
    in_head = True
    for raw in example.splitlines():
        line = raw.rstrip()
        if in_head:
            if line.startswith("#"):
                lines.append(_roff(line.lstrip("# ")))
                continue
            in_head = False
            lines += [".SH SECTIONS AND KEYS"]
        if line.startswith("["):
            body += [".SS " + _roff(line)]
        elif m := _KEY.fullmatch(line):
            body += [".TP", f"\\fB{m.group(1)}\\fR {_roff(m.group(2))}"]
            if m.group(3):
                body.append(_roff(m.group(3)))
        elif line.startswith("#   "):
            body.append(_roff(line[4:]))
        elif line.startswith("# ") and not _EXAMPLE.match(line):
            body += [".PP", _roff(line[2:])]
    lines += body
    lines += [".SH FILES", "/etc/mailtalk/mailtalk.toml; the example with every key: "
              "deploy/mailtalk.toml.example in the source.",
              ".SH SEE ALSO", "\\fBmailtalk\\fR(8)"]
    return "\n".join(lines) + "\n"


def pages(root: Path) -> dict[str, str]:
    """{file name: page text}; `root` is the source tree (for the example config)."""
    from mailtalk.cli import _parser
    example = (root / "deploy" / "mailtalk.toml.example").read_text(encoding="utf-8")
    return {"mailtalk.8": mailtalk_8(_parser()), "mailtalk.toml.5": mailtalk_toml_5(example)}


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("deploy/man")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in pages(Path(__file__).resolve().parents[2]).items():
        (out / name).write_text(text, encoding="utf-8")
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
