"""Connections counted per client address and in all (mailtalk/connlimit.py)."""

from __future__ import annotations

import logging

import pytest

from mailtalk.connlimit import EXEMPT, LOOPBACK, ConnLimiter, networks, total_within_fd_limit


def test_per_address_cap_refuses_the_next_and_release_frees_a_place() -> None:
    lim = ConnLimiter(per_address=2, total=100)
    a = ("192.0.2.7", 40000)
    t1, t2 = lim.admit(a), lim.admit(a)
    assert t1 == t2 == "192.0.2.7"
    assert lim.admit(a) is None
    assert lim.admit(("192.0.2.8", 1)) == "192.0.2.8"     # another address
    lim.release(t1)
    assert lim.admit(a) == "192.0.2.7"
    assert lim.open == 3 and lim.refused == 1


def test_the_total_caps_every_address_and_exempt_peers_too() -> None:
    lim = ConnLimiter(per_address=10, total=3, exempt=LOOPBACK)
    tickets = [lim.admit((f"192.0.2.{i}", 1)) for i in range(2)] + [lim.admit(("127.0.0.1", 1))]
    assert tickets[-1] == EXEMPT and None not in tickets
    assert lim.admit(("198.51.100.1", 1)) is None
    assert lim.admit(("127.0.0.2", 1)) is None
    for t in tickets:
        lim.release(t)
    assert lim.open == 0 and lim.by_address == {}


def test_loopback_and_trusted_proxies_are_not_counted_per_address() -> None:
    lim = ConnLimiter(per_address=1, total=100, exempt=LOOPBACK + networks(["203.0.113.0/28"]))
    for peer in [("127.0.0.1", 1), ("127.9.9.9", 1), ("::1", 1, 0, 0), ("203.0.113.5", 1)]:
        assert lim.admit(peer) == EXEMPT and lim.admit(peer) == EXEMPT
    assert lim.by_address == {}


def test_an_ipv6_client_is_its_64_and_a_mapped_ipv4_is_the_ipv4() -> None:
    lim = ConnLimiter(per_address=2, total=100)
    assert lim.admit(("2001:db8:1:2::1", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert lim.admit(("2001:db8:1:2:ffff::9", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert lim.admit(("2001:db8:1:2::77", 1, 0, 0)) is None
    assert lim.admit(("2001:db8:1:3::1", 1, 0, 0)) == "2001:db8:1:3::/64"
    assert lim.key(("::ffff:192.0.2.1", 1, 0, 0)) == "192.0.2.1"
    assert lim.key(("fe80::1%eth0", 1, 0, 2)) == "fe80::/64"
    assert lim.key("/run/sock") == EXEMPT and lim.key(None) == EXEMPT


def test_refusals_are_logged_once_a_minute_with_their_count(caplog) -> None:
    now = [0.0]
    lim = ConnLimiter(per_address=0, total=10, clock=lambda: now[0], name="t")
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            lim.admit(("192.0.2.1", 1))
        now[0] = 61.0
        lim.admit(("192.0.2.1", 1))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "refused 1 connection(s)" in lines[0] and "refused 5 connection(s)" in lines[1]


def test_the_total_is_at_most_a_share_of_the_open_file_limit(monkeypatch) -> None:
    import resource
    monkeypatch.setattr(resource, "getrlimit", lambda r: (1024, 4096))
    assert total_within_fd_limit(16384, 2) == 512
    assert total_within_fd_limit(100, 2) == 100
    monkeypatch.setattr(resource, "getrlimit", lambda r: (resource.RLIM_INFINITY,) * 2)
    assert total_within_fd_limit(100, 2) == 100


@pytest.mark.parametrize("value", ["192.0.2.1", "2001:db8::/48", "10.0.0.0/8"])
def test_networks_accept_addresses_and_networks(value: str) -> None:
    (net,) = networks([value])
    assert str(net).startswith(value.split("/")[0])
