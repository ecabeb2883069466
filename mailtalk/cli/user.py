"""`mailtalk user add|passwd|list|remove`: the presence service's accounts.

Exit codes: 0 done, 1 refused (no such account, already exists, weak password,
account outside [domains] names), 2 usage or configuration problem.

Run by root, it works as the owner of the database's directory, so that a
postmaster's `mailtalk user add` never leaves root-owned files the service (user
`mailtalk` under systemd) cannot write.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sqlite3
import sys
import time
from pathlib import Path

from mailtalk.accounts import account_domain
from mailtalk.config import Config
from presence_api.api import norm_account
from presence_api.auth import check_password_strength, hash_password
from mailtalk.config_values import redacted
from presence_api.server import open_store
from presence_api.store import Store, StoreUnavailable
from presence_api.store_sqlite import SqliteStore


def _err(msg: str) -> int:
    print(f"mailtalk user: {msg}", file=sys.stderr)
    return 1


def _read_password(from_stdin: bool) -> str | None:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if not sys.stdin.isatty():
        print("mailtalk user: no terminal to ask for the password; use --password-stdin",
              file=sys.stderr)
        return None
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        print("mailtalk user: the passwords differ", file=sys.stderr)
        return None
    return first


async def _run(cfg: Config, args: argparse.Namespace, store: Store) -> int:
    cmd = args.user_command
    if cmd == "list":
        accounts = await store.list_accounts()
        width = max([len("ACCOUNT"), *(len(a.account) for a in accounts)])
        # Presence mode: what the account set on its page (auto: online while a page
        # is open). Tab-free columns; `cut`/`awk` still split them on spaces.
        print(f"{'ACCOUNT':<{width}}  {'PRESENCE':<8}  CREATED (UTC)")
        for a in accounts:
            created = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(a.created_at))
            print(f"{a.account:<{width}}  {a.mode:<8}  {created}")
        if not accounts:
            print("(no accounts; add one: mailtalk user add ACCOUNT)", file=sys.stderr)
        return 0

    account = norm_account(args.account)
    if account is None:
        return _err(f"{args.account!r} is not an account (expected user@domain)")
    if cmd == "remove":
        if not await store.remove_account(account):
            return _err(f"{account}: no such account")
        print(f"removed {account}")
        return 0

    # add, passwd
    if cmd == "add" and account_domain(account) not in cfg.domains.names:
        return _err(f"{account}: the domain is not one of this site's "
                    f"([domains] names = {', '.join(cfg.domains.names) or 'none'})")
    exists = await store.get_account(account) is not None
    if cmd == "add" and exists:
        return _err(f"{account}: the account exists already (use `mailtalk user passwd`)")
    if cmd == "passwd" and not exists:
        return _err(f"{account}: no such account")
    password = _read_password(args.password_stdin)
    if password is None:
        return 1
    weak = check_password_strength(password)
    if weak:
        return _err(weak)
    pw_hash = await asyncio.get_running_loop().run_in_executor(None, hash_password, password)
    if cmd == "add":
        if not await store.create_account(account, pw_hash, time.time()):
            return _err(f"{account}: the account exists already")
        print(f"added {account}")
    else:
        await store.set_password(account, pw_hash)
        print(f"password of {account} changed; its sessions are ended")
    return 0


def become_db_owner(path: Path) -> None:
    """Run by root, act as the owner of the database's directory (the service's user,
    e.g. `mailtalk` under systemd): files SQLite creates (the database, its -wal and
    -shm) must stay writable by the service."""
    if os.geteuid() != 0:
        return
    try:
        st = path.parent.stat()
    except OSError:
        return
    if st.st_uid != 0:
        os.setgroups([])
        os.setgid(st.st_gid)
        os.setuid(st.st_uid)


async def _main(cfg: Config, args: argparse.Namespace) -> int:
    store = open_store(cfg)
    if isinstance(store, SqliteStore):
        become_db_owner(store.path)
    try:
        await store.open()
    except (OSError, sqlite3.Error, RuntimeError, StoreUnavailable) as e:
        print(f"mailtalk user: {redacted(cfg.presence.database)}: cannot open the database: "
              f"{e}", file=sys.stderr)
        return 2
    try:
        return await _run(cfg, args, store)
    finally:
        await store.close()


def main(cfg: Config, args: argparse.Namespace) -> int:
    return asyncio.run(_main(cfg, args))
