"""Discovery of a domain's presence service without a DNS server: the `_mailtalk` TXT
record's grammar, and the Discoverer over an injected resolver (StaticResolver). DNS
itself (TTLs, negative caching, records over the wire, dead DNS): tests/e2e/test_discovery_dns.py."""

from __future__ import annotations

import asyncio

import pytest

from mailtalk.discovery import BadRecord, Discoverer, choose_record, parse_record
from support.lookup_config import make_config
from support.static_dns import StaticResolver


@pytest.mark.parametrize("text,api", [
    ("v=mailtalk1; api=https://chat.a.example", "https://chat.a.example"),
    ("v=mailtalk1;api=https://chat.a.example/", "https://chat.a.example"),
    ("v=mailtalk1; api=https://chat.a.example:8443/mt;", "https://chat.a.example:8443/mt"),
    ("  v=mailtalk1 ;  api=http://127.0.0.2:8080 ", "http://127.0.0.2:8080"),
    ("v=mailtalk1; api=http://127.9.8.7", "http://127.9.8.7"),
    ("v=mailtalk1; api=http://localhost:8470", "http://localhost:8470"),
    ("v=mailtalk1; api=http://[::1]:8470", "http://[::1]:8470"),
])
def test_good_records_parse(text, api):
    assert parse_record(text).api == api


@pytest.mark.parametrize("text,why", [
    ("v=mailtalk1; api=http://chat.a.example", "https"),            # http off loopback
    ("v=mailtalk1; api=http://10.0.0.1:8080", "https"),
    ("v=mailtalk1; api=http://localhost.evil.example", "https"),
    ("v=mailtalk1", "no api"),
    ("api=https://a.example; v=mailtalk1", "start with"),
    ("v=mailtalk2; api=https://a.example", "start with"),
    ("v=mailtalk1; api=https://a.example; api=https://b.example", "twice"),
    ("v=mailtalk1; api=https://a.example; extra=1", "unknown tag"),
    ("v=mailtalk1; api", "tag=value"),
    ("v=mailtalk1; api=ftp://a.example", "http(s)"),
    ("v=mailtalk1; api=https://user:pw@a.example", "credentials"),
    ("v=mailtalk1; api=https://a.example/?q=1", "query"),
    ("v=mailtalk1; api=https://a.example:99999", "http(s)"),
    ("v=mailtalk1; api=https://a.example/<script>", "clean"),
    ("v=mailtalk1; api=https://ä.example", "ASCII"),
    ("v=mailtalk1; api=https://a.example/" + "x" * 3000, "longer"),
])
def test_bad_records_refused(text, why):
    with pytest.raises(BadRecord, match=why.replace("(", r"\(").replace(")", r"\)")):
        parse_record(text)


def test_only_our_record_counts_and_only_once():
    assert choose_record(["v=spf1 -all", "v=mailtalk10; api=x"]) is None
    assert choose_record(["v=spf1 -all", "v=mailtalk1; api=https://a.example"]).host == "a.example"
    with pytest.raises(BadRecord, match="more than one"):
        choose_record(["v=mailtalk1; api=https://a.example", "v=mailtalk1; api=https://b.example"])


def test_endpoint_origin_is_scheme_host_and_port():
    ep = parse_record("v=mailtalk1; api=https://chat.a.example/base")
    assert ep.same_origin("https://chat.a.example/c/abc")
    assert ep.same_origin("https://CHAT.a.example:443/c/abc")
    assert not ep.same_origin("http://chat.a.example/c/abc")
    assert not ep.same_origin("https://chat.a.example:8443/c/abc")
    assert not ep.same_origin("https://chat.a.example.evil.example/c/abc")
    assert not ep.same_origin("https://evil.example/c/abc")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def discoverer(clock: Clock, **cfg):
    """A Discoverer over a StaticResolver (which records every query) answering ok.test."""
    static = StaticResolver({"_mailtalk.ok.test": ["v=mailtalk1; api=https://chat.ok.test"]},
                            ttl=60)
    disc = Discoverer(make_config(**cfg).dns, resolver=static, clock=clock)
    return disc, static


async def test_concurrent_discoveries_share_one_query():
    disc, counting = discoverer(Clock())
    results = await asyncio.gather(*(disc.discover("ok.test") for _ in range(5)))
    assert all(r.endpoint is not None for r in results)
    assert counting.queries == ["_mailtalk.ok.test"]


async def test_bad_domain_is_not_queried():
    disc, counting = discoverer(Clock())
    found = await disc.discover("not a domain")
    assert found.endpoint is None and counting.queries == []


async def test_static_records_answer_without_dns(tmp_path):
    """`[dns] static`: a given record, and "self" = this site's public URL and key."""
    from mailtalk import discovery
    from mailtalk.config import parse_text
    from mailtalk.lookup_signing import load_or_create_signing_key, public_key_text
    cfg = parse_text(f"""
[site]
state_dir = "{tmp_path}"
[domains]
names = ["localhost"]
[presence]
public_url = "http://127.0.0.1:8470"
[dns]
static = {{ localhost = "self", "x.test" = "v=mailtalk1; api=http://127.0.0.2:81" }}
""", "t")
    counting = StaticResolver({}, ttl=60)
    disc = discovery.for_config(cfg, counting)
    own = (await disc.discover("LOCALHOST")).endpoint
    assert own is not None and own.api == "http://127.0.0.1:8470"
    assert own.keys == (public_key_text(load_or_create_signing_key(cfg.site.signing_key_file)),)
    other = (await disc.discover("x.test")).endpoint
    assert other is not None and other.api == "http://127.0.0.2:81" and other.keys == ()
    assert (await disc.discover("y.test")).error == "no record"
    assert counting.queries == ["_mailtalk.y.test"]          # only the one not static
