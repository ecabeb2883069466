"""A config for the lookup client and discovery: the [filter] lookup keys and [dns]."""

from __future__ import annotations

from mailtalk.config import Config, parse_text


def make_config(nameserver: str | None = None, *, lookup_timeout: float = 2.0,
                concurrency: int = 8, negative_ttl: int = 300, max_ttl: int = 3600,
                extra: str = "") -> Config:
    """`nameserver`: `ADDR:PORT` of a real DNS server; None with an injected resolver."""
    servers = f'nameservers = ["{nameserver}"]' if nameserver else ""
    return parse_text(f"""
[filter]
lookup_timeout = {lookup_timeout}
lookup_concurrency_per_domain = {concurrency}
[dns]
{servers}
negative_ttl = {negative_ttl}
max_ttl = {max_ttl}
{extra}
""", "test config")
