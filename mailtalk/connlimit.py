"""Open connections counted per client address and in all, for the listeners that face
clients (the presence service, the content filter): a connection over either cap is
refused as it is accepted, before anything of it is read.

- A client address is an IPv4 address, or an IPv6 /64 (one host or site gets a whole
  /64, so counting single IPv6 addresses would cap nothing); an IPv4-mapped IPv6 peer
  counts as its IPv4 address.
- Exempt peers (`exempt` networks) are not counted per address, only in all: loopback,
  since every local process can connect from any of 127.0.0.0/8 (a per-address cap
  there separates no one, and would starve a TLS proxy or Postfix on the same host), and
  trusted proxies, which hold the connections of all their clients.
- The total keeps a flood from many addresses below the process's open-file limit, which
  the other parts of `mailtalk run` share (`total_within_fd_limit`).

Refusals are logged at most once a minute, with their count.
"""

from __future__ import annotations

import ipaddress
import logging
import resource
import time
from typing import Any, Callable, Iterable, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                 ipaddress.ip_network("::1/128"))
WARN_EVERY = 60.0              # seconds between two log lines about refusals
EXEMPT = ""                    # the key of a connection counted in the total only


def networks(values: Iterable[Any]) -> tuple[Network, ...]:
    """Networks from strings ("192.0.2.1", "2001:db8::/48") or ipaddress objects."""
    out: list[Network] = []
    for v in values:
        if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            out.append(v)
        else:
            out.append(ipaddress.ip_network(str(v), strict=False))
    return tuple(out)


def total_within_fd_limit(cap: int, share: int) -> int:
    """`cap`, but at most 1/`share` of the soft open-file limit (read now: after the
    runner raised it), so that one listener cannot take every descriptor."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return cap
    return max(1, min(cap, soft // share))


def _address(peer: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(peer, (tuple, list)) or not peer:
        return None                     # a unix socket's peer, or unknown
    try:
        addr = ipaddress.ip_address(str(peer[0]).partition("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class ConnLimiter:
    """`admit(peername)` gives a ticket (pass it to `release` when the connection ends)
    or None: refuse the connection."""

    def __init__(self, per_address: int, total: int, exempt: Iterable[Network] = (),
                 name: str = "listener", logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_address, self.total = per_address, total
        self.exempt = tuple(exempt)
        self.name = name
        self.open = 0
        self.by_address: dict[str, int] = {}
        self.refused = 0                # since start
        self._log = logger or logging.getLogger("mailtalk")
        self._clock = clock
        self._unreported = 0
        self._last_warning = float("-inf")

    def key(self, peer: Any) -> str:
        """The address a connection counts against; EXEMPT for exempt or unknown peers."""
        addr = _address(peer)
        if addr is None or any(addr in n for n in self.exempt
                               if n.version == addr.version):
            return EXEMPT
        if isinstance(addr, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((addr, 64), strict=False))
        return str(addr)

    def admit(self, peer: Any) -> str | None:
        key = self.key(peer)
        if self.open >= self.total:
            self._refuse(key or "?", f"{self.total} connections in all")
            return None
        if key and self.by_address.get(key, 0) >= self.per_address:
            self._refuse(key, f"{self.per_address} from one client address")
            return None
        self.open += 1
        if key:
            self.by_address[key] = self.by_address.get(key, 0) + 1
        return key

    def release(self, ticket: str) -> None:
        self.open -= 1
        if ticket:
            left = self.by_address[ticket] - 1
            if left:
                self.by_address[ticket] = left
            else:
                del self.by_address[ticket]

    def _refuse(self, key: str, why: str) -> None:
        self.refused += 1
        self._unreported += 1
        now = self._clock()
        if now - self._last_warning >= WARN_EVERY:
            self._log.warning("%s: refused %d connection(s), the last from %s: over %s",
                              self.name, self._unreported, key, why)
            self._unreported = 0
            self._last_warning = now
