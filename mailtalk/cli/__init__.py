"""The `mailtalk` command: `mailtalk [-c CONFIG] [-v] SUBCOMMAND`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Callable

from mailtalk import __version__
from mailtalk.cli import logsetup
from mailtalk.config import Config, ConfigError, load
from mailtalk.mailid import SiteKeyError

log = logging.getLogger("mailtalk")

SERVICES = ("milter", "filter", "presence")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mailtalk",
        description="E-mail and chat joined inside the mail servers.",
        epilog="Config: -c, else $MAILTALK_CONFIG, else /etc/mailtalk/mailtalk.toml "
               "(when that file is absent: the embedded loopback defaults).")
    p.add_argument("-c", "--config", metavar="CONFIG", help="the TOML config file")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    p.add_argument("--version", action="version", version=f"mailtalk {__version__}")
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    # -c and -v after the subcommand too (`mailtalk check -c my.toml`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="CONFIG", default=argparse.SUPPRESS,
                        help="the TOML config file")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more logging")

    sub.add_parser("run", parents=[common], help="every service whose config section is present, in one process",
                   description="Start every service whose section ([milter], [filter], "
                               "[presence]) is in the config, in one process; SIGTERM or "
                               "SIGINT stops them all.")
    sub.add_parser("milter", parents=[common], help="the sending milter (sender's MTA)",
                   description="The pymilter milter for the sender's MTA: adds "
                               "X-Messenger-Account and X-Mail-ID for SASL senders.")
    sub.add_parser("filter", parents=[common], help="the receiving content filter (recipient's MTA)",
                   description="The receiving hook, as [filter] mode says: the after-queue "
                               "content filter for Postfix (smtp), the LMTP hook before "
                               "the mailbox server (lmtp) or the milter for Sendmail "
                               "(milter). Adds X-Sender-Online with each recipient's chat "
                               "link, and the notice.")
    sub.add_parser("presence", parents=[common], help="the presence service and web chat",
                   description="The aiohttp presence service: log-in, presence, web chat, "
                               "the lookup API (/openapi.json).")
    sub.add_parser("check", parents=[common], help="diagnose config, DNS and reachability",
                   description="Check the config, this site's _mailtalk DNS records, that "
                               "the presence service answers and that Postfix has our lines.")
    sub.add_parser("dns", parents=[common], help="print the DNS records this site must publish",
                   description="Print the _mailtalk TXT record of every [domains] name.")

    t = sub.add_parser("trial", parents=[common], help="send one mail through the running services",
                       description="Pass one mail from SENDER (as if logged in) to each "
                                   "RECIPIENT through the running sending milter, presence "
                                   "service and content filter, take it back at [filter] "
                                   "reinject and print the recipients' X-Sender-Online and "
                                   "notice. For a trial on one host (no MTA).")
    t.add_argument("sender", metavar="SENDER", help="e.g. alice@localhost")
    t.add_argument("recipients", metavar="RECIPIENT", nargs="+", help="e.g. bob@localhost")

    user = sub.add_parser("user", parents=[common], help="add, passwd, list, remove messenger accounts",
                          description="Manage the presence service's accounts.")
    usub = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    for name, text in (("add", "create an account"), ("passwd", "set an account's password")):
        a = usub.add_parser(name, parents=[common], help=text, description=text)
        a.add_argument("account", metavar="ACCOUNT", help="e.g. alice@a.example")
        a.add_argument("--password-stdin", action="store_true",
                       help="read the password from standard input (else: prompt)")
    usub.add_parser("list", parents=[common], help="list accounts", description="list accounts")
    r = usub.add_parser("remove", parents=[common], help="remove an account", description="remove an account")
    r.add_argument("account", metavar="ACCOUNT")
    return p


def _not_built(what: str) -> int:
    print(f"mailtalk: {what} is not built yet", file=sys.stderr)
    return 2


def _call(module_name: str, func: str, *args: object) -> int:
    """Call module.func(*args); a part that does not exist yet says so (exit 2)."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            return _not_built(module_name)
        raise
    fn = getattr(module, func, None)
    if fn is None:
        return _not_built(f"{module_name}.{func}")
    return fn(*args)


def _services_for(command: str, cfg: Config) -> list[str]:
    if command != "run":
        return [command]
    return [s for s in SERVICES if cfg.has(s)]


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """`[site] event_loop`: uvloop's loop, or None for asyncio's own (the config loader
    has checked that an explicit "uvloop" is installed)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None              # "auto" without uvloop
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logsetup.setup(verbose=args.verbose)
    try:
        # With no config file at the default path every subcommand uses the embedded
        # defaults, so that `user add` and `check` act on what `run` serves.
        cfg = load(args.config)
    except ConfigError as e:
        print(f"mailtalk: {e}", file=sys.stderr)
        return 2
    logsetup.setup(cfg.site.log_level, args.verbose)

    try:
        if args.command in ("run",) + SERVICES:
            names = _services_for(args.command, cfg)
            if not names:
                print(f"mailtalk: {cfg.source}: no [milter], [filter] or [presence] "
                      f"section: nothing to run", file=sys.stderr)
                return 2
            from mailtalk.cli import runner
            with asyncio.Runner(loop_factory=loop_factory(cfg.site.event_loop)) as loop:
                return loop.run(runner.serve(cfg, names))
        if args.command == "user":
            return _call("mailtalk.cli.user", "main", cfg, args)
        if args.command == "check":
            return _call("mailtalk.cli.check", "check", cfg)
        if args.command == "trial":
            return _call("mailtalk.cli.trial", "trial", cfg, args)
        if args.command == "dns":
            return _call("mailtalk.cli.check", "dns_records", cfg)
    except (ConfigError, SiteKeyError) as e:
        print(f"mailtalk: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2
